/**
 * One upstream fetch per image: concurrent first downloads follow one fill,
 * a client going away does not stop it, a failing fill aborts every follower,
 * ranges come from the cache or from the growing file, and a stall is one
 * answer whether the fill's writer is in this process or another.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it, type TestContext } from 'node:test';
import { imageBytes } from '../support/fake-glance.js';
import { download, errorMessage, fetchAll, fileUrl, metric, send, startFakeGlanceAndNode, until } from './helpers.js';


describe('fills: one upstream fetch per image', () => {
  it('10 concurrent first downloads read the image from the upstream once, all byte-identical', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8 * 1024 * 1024 + 3);
    const image = await fake.addImage({ data });
    const held = fake.hold(image.id);
    const downloads = Array.from({ length: 10 }, () => download(fileUrl(url, image.id)));
    await held.waiting;
    // The other nine have joined the fill while its upstream request is held.
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 9, 'nine followers');
    held.release();
    for (const result of await Promise.all(downloads)) {
      assert.ok(result.ok, result.ok ? '' : result.error.message);
      assert.equal(result.response.status, 200);
      assert.ok(result.response.body.equals(data));
    }
    assert.equal(fake.fileRequests(image.id), 1);
    assert.equal(fake.bytesSent(image.id), data.length);
    assert.equal(await node.cache.isCached(image.id), true);
  });

  it('goes on when the first client disconnects: the others get the image and it is cached', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const held = fake.hold(image.id);
    const first = await startDownload(fileUrl(url, image.id));
    await held.waiting;
    const second = download(fileUrl(url, image.id));
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 1, 'a follower');
    first.abort();
    held.release();
    const result = await second;
    assert.ok(result.ok && result.response.body.equals(data));
    await until(() => node.cache.isCached(image.id), 'the image cached');
    assert.equal(fake.fileRequests(image.id), 1);
  });

  it('aborts every follower when the fill fails, caches nothing, and the next request fills again', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    fake.setFault(image.id, { kind: 'reset', afterBytes: 5 * 1024 * 1024 });
    const held = fake.hold(image.id);
    const downloads = Array.from({ length: 5 }, () => download(fileUrl(url, image.id)));
    await held.waiting;
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 4, 'four followers');
    held.release();
    for (const result of await Promise.all(downloads)) assert.equal(result.ok, false, 'no follower gets a short body that looks whole');
    assert.equal(await node.cache.isCached(image.id), false);
    fake.setFault(image.id, undefined);
    const again = await download(fileUrl(url, image.id));
    assert.ok(again.ok && again.response.body.equals(data));
    assert.equal(fake.fileRequests(image.id), 2);
  });
});

describe('fills: ranges', () => {
  it('serves a-b, a- and -n of a cached image as 206 from disk, and 416 past the end', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const data = imageBytes(100_000);
    const image = await fake.addImage({ data });
    await fetchAll(fileUrl(url, image.id));
    const cases: Array<[string, number, number]> = [['bytes=0-9', 0, 9], ['bytes=99990-', 99_990, 99_999], ['bytes=-5', 99_995, 99_999], ['bytes=50000-50000', 50_000, 50_000]];
    for (const [header, start, end] of cases) {
      const response = await fetchAll(fileUrl(url, image.id), { headers: { range: header } });
      assert.equal(response.status, 206, header);
      assert.equal(response.headers['content-range'], `bytes ${start}-${end}/${data.length}`);
      assert.equal(response.headers['content-length'], String(end - start + 1));
      assert.ok(response.body.equals(data.subarray(start, end + 1)), header);
    }
    const unsatisfiable = await fetchAll(fileUrl(url, image.id), { headers: { range: 'bytes=100000-' } });
    assert.equal(unsatisfiable.status, 416);
    assert.equal(unsatisfiable.headers['content-range'], `bytes */${data.length}`);
    assert.equal(fake.fileRequests(image.id), 1, 'every range from the cache');
  });

  it('forwards a range of an image nobody is filling, and caches nothing', async (t) => {
    const { fake, url, node } = await startFakeGlanceAndNode(t);
    const data = imageBytes(100_000);
    const image = await fake.addImage({ data });
    const response = await fetchAll(fileUrl(url, image.id), { headers: { range: 'bytes=10-19' } });
    assert.equal(response.status, 206);
    assert.ok(response.body.equals(data.subarray(10, 20)));
    assert.equal(fake.requests.at(-1)!.headers.range, 'bytes=10-19');
    assert.equal(await node.cache.isCached(image.id), false);
  });

  it('serves a range from the growing file during a fill, without a second upstream request', async (t) => {
    const { fake, url } = await startFakeGlanceAndNode(t);
    const data = imageBytes(8 * 1024 * 1024);
    const image = await fake.addImage({ data });
    const held = fake.hold(image.id);
    const whole = download(fileUrl(url, image.id));
    await held.waiting;
    const ranged = fetchAll(fileUrl(url, image.id), { headers: { range: 'bytes=4194304-4194403' } });
    await until(async () => (await metric(url, 'image_cache_coalesced_total')) === 1, 'the range to follow the fill');
    held.release();
    const response = await ranged;
    assert.equal(response.status, 206);
    assert.ok(response.body.equals(data.subarray(4_194_304, 4_194_404)));
    assert.ok((await whole).ok);
    assert.equal(fake.fileRequests(image.id), 1);
  });
});

describe('fills: stalls', () => {
  it('a stall is the same error and the same 502 whether the fill\'s writer is in this process (its source stalls) or in another (it stops writing)', async (t) => {
    const { fake, url, dir } = await startFakeGlanceAndNode(t, { server: { upstreamTimeout: 0.5 } });
    const json = { headers: { accept: 'application/json' } };

    const here = await fake.addImage({ data: imageBytes(4 * 1024 * 1024, 1) });
    fake.setFault(here.id, { kind: 'stall', afterBytes: 0 });
    const local = await fetchAll(fileUrl(url, here.id), json);

    const elsewhere = await fake.addImage({ data: imageBytes(4 * 1024 * 1024, 2) });
    await holdClaimInAnotherProcess(t, `${dir}/cache`, elsewhere.id);
    const foreign = await fetchAll(fileUrl(url, elsewhere.id), json);

    assert.equal(local.status, 502, local.body.toString());
    assert.equal(foreign.status, 502, foreign.body.toString());
    const localMessage = errorMessage(local.body);
    const foreignMessage = errorMessage(foreign.body);
    // The fill's stall guard or the upstream connection's timeout, whichever fires first: the same error.
    assert.match(localMessage, new RegExp(`^Bad gateway: .*${here.id}.* sent nothing for 0\\.5 s$`));
    // Its followers wait twice upstream_timeout: the writer should have timed out by itself first.
    assert.match(foreignMessage, new RegExp(`^Bad gateway: Image '${elsewhere.id}': the writer of its fill in another process sent nothing for 1 s$`));
    assert.equal(fake.fileRequests(elsewhere.id), 0, 'the node followed the other process\'s fill, it did not start its own');
  });
});

/**
 * Claims the image in the cache directory from a separate process, as another
 * worker's fill would, and has it write nothing: a writer that hangs. Resolves
 * once the claim is held; the process is killed after the test.
 */
async function holdClaimInAnotherProcess(t: TestContext, cacheDir: string, imageId: string): Promise<void> {
  const script = `
    import { ImageCache, silentLogger } from ${JSON.stringify(new URL('../../src/index.js', import.meta.url).href)};
    const cache = await ImageCache.create({ imageCacheDir: process.argv[1], logger: silentLogger });
    globalThis.writer = await cache.openForWrite(process.argv[2]);
    console.log('claimed');
    process.stdin.resume();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, cacheDir, imageId], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  assert.equal(line.toString().trim(), 'claimed');
}

/** A download whose body we stop reading and abort when we choose. */
async function startDownload(url: string): Promise<{ abort(): void }> {
  const controller = new AbortController();
  const pending = send(url, { signal: controller.signal }).then(
    (response) => response.resume().on('error', () => {}),
    () => undefined,
  );
  return {
    abort() {
      controller.abort();
      void pending;
    },
  };
}
