import type { CheckLine } from '../tools/kind.js';
import { TARGET_KINDS } from '../tools/kinds.js';
import { loadConfig } from './config.js';
import { kindEnv } from './gateway.js';

/**
 * `gatehouse targets check [NAME...]`: each target (or the named ones) in config order, one
 * heading line, then what works, warnings and errors, as the target's kind checks it. Exit 1
 * when a target cannot be used (or, with `strict`, when anything warned); 2 for an unknown
 * name (a usage error).
 */
export async function targetsCheck(
  configFile: string,
  names: string[],
  opts: { strict: boolean; out: NodeJS.WritableStream },
): Promise<number> {
  const config = await loadConfig(configFile);
  const unknown = names.filter((n) => !Object.hasOwn(config.targets, n));
  if (unknown.length > 0) {
    opts.out.write(
      `gatehouse: no target named ${unknown.join(', ')} in ${configFile} ` +
        `(targets: ${Object.keys(config.targets).join(', ') || 'none'})\n`,
    );
    return 2;
  }
  const chosen = names.length > 0 ? names : Object.keys(config.targets);
  // Each kind is opened once, for the targets of that kind being checked, and closed after.
  const instances = new Map(
    TARGET_KINDS.filter((k) => chosen.some((n) => config.targets[n]?.kind === k.kind)).map(
      (k) => [k.kind, { kind: k, instance: k.open(kindEnv(config, k, true)) }] as const,
    ),
  );
  let errors = 0;
  let warnings = 0;
  try {
    for (const name of chosen) {
      const target = config.targets[name];
      const opened = target && instances.get(target.kind);
      if (!target || !opened) continue;
      opts.out.write(`${name} (${opened.kind.summary(target)})\n`);
      let lines: CheckLine[];
      try {
        lines = await opened.instance.check(target);
      } catch (err) {
        // A secret that cannot be resolved: say which, never its value.
        const cause = (err as { cause?: unknown }).cause;
        lines = [
          {
            level: 'error',
            text: `${(err as Error).message}${cause instanceof Error ? `: ${cause.message}` : ''}`,
          },
        ];
      }
      for (const l of lines) {
        opts.out.write(`  ${l.level.padEnd(7)} ${l.text}\n`);
        if (l.level === 'error') errors++;
        if (l.level === 'warning') warnings++;
      }
    }
  } finally {
    await Promise.allSettled([...instances.values()].map((o) => o.instance.close()));
  }
  opts.out.write(
    `${chosen.length} target${chosen.length === 1 ? '' : 's'} checked: ${errors} error${errors === 1 ? '' : 's'}, ` +
      `${warnings} warning${warnings === 1 ? '' : 's'}\n`,
  );
  return errors > 0 || (opts.strict && warnings > 0) ? 1 : 0;
}
