/** The pool benchmark's task: waits SLEEP_MS (default 20) and answers its input; prints `ran <x>` so executions are counted. */
const MS = Number(process.env['SLEEP_MS'] ?? 20);

export default async function sleep(x: number): Promise<number> {
  process.stderr.write(`ran ${x}\n`);
  await new Promise((r) => setTimeout(r, MS));
  return x;
}
