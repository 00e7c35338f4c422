/**
 * The fake Glance of bench/load.ts in a process of its own (forked with an
 * IPC channel), so that the upstream never shares an event loop with the
 * load generator or the bench's samplers. It holds the images of
 * load-images.ts in memory, sends `{ url }` once listening, answers
 * 'stats' with its request counts, and exits when the channel closes.
 */
import { imageBytes, startFakeGlance } from '../test/support/fake-glance.js';
import { LOAD_IMAGES } from './load-images.js';

export interface UpstreamStats {
  fileRequests: number;
  metadataRequests: number;
  bytesSent: number;
}

async function main(): Promise<void> {
  if (process.send === undefined) throw new Error('load-upstream: run me with child_process.fork (I need an IPC channel)');
  const fake = await startFakeGlance();
  for (const image of LOAD_IMAGES) await fake.addImage({ id: image.id, name: `load-${image.size}`, data: imageBytes(image.size, image.seed) });
  process.on('message', (message) => {
    if (message !== 'stats') return;
    const stats: UpstreamStats = { fileRequests: 0, metadataRequests: 0, bytesSent: 0 };
    for (const { id } of LOAD_IMAGES) {
      stats.fileRequests += fake.fileRequests(id);
      stats.metadataRequests += fake.metadataRequests(id);
      stats.bytesSent += fake.bytesSent(id);
    }
    process.send!({ stats });
  });
  // The parent gone (ended, killed): nothing left to serve.
  process.once('disconnect', () => void fake.close().finally(() => process.exit(0)));
  process.send({ url: fake.url });
}

main().catch((err: Error) => {
  process.stderr.write(`load-upstream: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
