/**
 * A PostgreSQL server of a test's own, which the test may stop, restart and
 * crash: a fresh cluster (initdb) in a temporary directory, on a free port of
 * 127.0.0.1, its socket in that directory, trust authentication for user
 * postgres. Run as user postgres when the test runs as root (initdb and
 * postgres refuse to run as root). destroy() stops it and removes the
 * directory; a server left running when this process exits is shut down
 * (immediate mode) then.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './processes.js';

const run = promisify(execFile);

/** How pg_ctl stops the server: fast (clients disconnected, a clean shutdown) or immediate (a crash, recovered at the next start). */
export type StopMode = 'fast' | 'immediate';

/** The bin directory of the installed server: pg_config's when it has initdb (a newer libpq's pg_config may not), else the newest /usr/lib/postgresql/N/bin. */
export function postgresBinDir(): string {
  const candidates: string[] = [];
  try {
    candidates.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim());
  } catch {
    // no pg_config: look where Debian installs servers
  }
  const root = '/usr/lib/postgresql';
  if (fs.existsSync(root)) {
    const versions = fs.readdirSync(root).filter((name) => /^\d+$/.test(name)).sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((version) => path.join(root, version, 'bin')));
  }
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, 'initdb')) && fs.existsSync(path.join(dir, 'pg_ctl')));
  if (found === undefined) throw new Error(`no PostgreSQL server binaries (initdb, pg_ctl) in ${candidates.join(', ') || 'pg_config --bindir or /usr/lib/postgresql/*/bin'}`);
  return found;
}

export class PostgresServer {
  private destroyed = false;

  private constructor(
    /** The cluster's data directory, which also holds its socket and its log. */
    readonly dir: string,
    readonly port: number,
    private readonly bin: string,
  ) {
    running.add(this);
  }

  /** initdb and start a new cluster. */
  static async start(): Promise<PostgresServer> {
    const bin = postgresBinDir();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'image-cache-pg-'));
    const port = await freePort(0);
    const server = new PostgresServer(dir, port, bin);
    try {
      if (process.getuid?.() === 0) {
        const owner = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
        const group = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
        fs.chownSync(dir, owner, group);
      }
      fs.chmodSync(dir, 0o700);
      await server.asOwner('initdb', ['-D', server.dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync']);
      await server.startAgain();
    } catch (err) {
      await server.destroy();
      throw err;
    }
    return server;
  }

  /** A connection URL for `database` (default: postgres), as user postgres. */
  url(database = 'postgres'): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/${database}`;
  }

  /** Starts the (stopped) server; resolves once it accepts connections. */
  async startAgain(): Promise<void> {
    await this.pgCtl(['start', '-w', '-t', '60', '-l', this.logFile, '-o', this.serverOptions()]);
  }

  /** Stops the server; resolves once it is down (its port refuses connections). */
  async stop(mode: StopMode = 'fast'): Promise<void> {
    await this.pgCtl(['stop', '-w', '-t', '60', '-m', mode]);
  }

  /** Stops and starts the server, as `pg_ctl restart` does. */
  async restart(mode: StopMode = 'fast'): Promise<void> {
    await this.pgCtl(['restart', '-w', '-t', '60', '-m', mode, '-l', this.logFile, '-o', this.serverOptions()]);
  }

  /** The end of the server's log, for failure messages. */
  logTail(lines = 20): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** Stops the server if it runs (immediate: nothing of it is kept) and removes its directory. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    running.delete(this);
    if (fs.existsSync(path.join(this.dataDir, 'postmaster.pid'))) {
      await this.pgCtl(['stop', '-w', '-t', '60', '-m', 'immediate']).catch(() => this.killPostmaster());
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** The postmaster's pid, from postmaster.pid, if the server runs. */
  postmasterPid(): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n', 1)[0]);
      return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** SIGQUIT to the postmaster: an immediate shutdown, without waiting (for process exit, where nothing can wait). */
  killPostmaster(): void {
    const pid = this.postmasterPid();
    if (pid === undefined) return;
    try {
      process.kill(pid, 'SIGQUIT');
    } catch {
      // already gone
    }
  }

  private get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  private get logFile(): string {
    return path.join(this.dir, 'server.log');
  }

  /** Loopback only, the socket in our directory (not /var/run/postgresql, which may not be ours to use), and no fsync: a test's data need not survive the machine. */
  private serverOptions(): string {
    return `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off`;
  }

  private async pgCtl(args: string[]): Promise<void> {
    try {
      await this.asOwner('pg_ctl', ['-D', this.dataDir, ...args]);
    } catch (err) {
      throw new Error(`pg_ctl ${args[0]} failed: ${(err as Error).message}\n${this.logTail()}`, { cause: err });
    }
  }

  /** A server binary, as user postgres when we are root. Its output is collected, not inherited (pg_ctl's server writes to the log file). */
  private async asOwner(command: string, args: string[]): Promise<void> {
    const file = path.join(this.bin, command);
    const [cmd, argv] = process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
    await run(cmd, argv, { cwd: this.dir, timeout: 120_000 });
  }
}

const running = new Set<PostgresServer>();
process.on('exit', () => {
  for (const server of running) {
    server.killPostmaster();
    fs.rmSync(server.dir, { recursive: true, force: true });
  }
});
