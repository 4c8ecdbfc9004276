import { checkPostgresTarget, type CheckLine } from '../tools/postgres/check.js';
import { loadConfig } from './config.js';
import { resolvePostgres } from './runtime.js';

/**
 * `gatehouse targets check [NAME...]`: each target (or the named ones) in config order, one
 * heading line, then what works, warnings and errors. Exit 1 when a target cannot be used
 * (or, with `strict`, when anything warned); 2 for an unknown name (a usage error).
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
  let errors = 0;
  let warnings = 0;
  for (const name of chosen) {
    const target = config.targets[name];
    if (!target) continue;
    let lines: CheckLine[];
    if (target.kind === 'postgres') {
      opts.out.write(`${name} (postgres ${target.host}:${target.port}/${target.database})\n`);
      try {
        lines = await checkPostgresTarget(await resolvePostgres(config, target));
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
    } else {
      opts.out.write(`${name} (${target.kind})\n`);
      lines = [
        {
          level: 'warning',
          text: `targets of kind ${target.kind} are not served by this release, so not checked`,
        },
      ];
    }
    for (const l of lines) {
      opts.out.write(`  ${l.level.padEnd(7)} ${l.text}\n`);
      if (l.level === 'error') errors++;
      if (l.level === 'warning') warnings++;
    }
  }
  opts.out.write(
    `${chosen.length} target${chosen.length === 1 ? '' : 's'} checked: ${errors} error${errors === 1 ? '' : 's'}, ` +
      `${warnings} warning${warnings === 1 ? '' : 's'}\n`,
  );
  return errors > 0 || (opts.strict && warnings > 0) ? 1 : 0;
}
