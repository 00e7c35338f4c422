/** What the benches read of processes from /proc: resident memory, CPU time, parents. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

/** Clock ticks per second, the unit of the CPU times in /proc/PID/stat. */
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

export function readProc(pid: number, file: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined; // exited while we looked
  }
}

export interface ProcStat {
  pid: number;
  ppid: number;
  /** R, S, D, Z, ... */
  state: string;
  /** utime + stime, in CLK_TCK. */
  ticks: number;
}

/** A process's state, parent and CPU ticks, from /proc/PID/stat; undefined once it has exited. */
export function procStat(pid: number): ProcStat | undefined {
  const stat = readProc(pid, 'stat');
  if (stat === undefined) return undefined;
  // After the command name (which may hold spaces and parentheses), field 3 of stat(5) is index 0.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { pid, ppid: Number(fields[1]), state: fields[0]!, ticks: Number(fields[11]) + Number(fields[12]) };
}
