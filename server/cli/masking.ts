import { TARGET_KINDS } from '../../tools/kinds.js';
import { safe } from '../../recordings/commands.js';
import { loadConfig } from '../config.js';
import { kindEnv } from '../gateway.js';
import { command, configOption, requireConfig, UsageError, type Group } from './command.js';

/**
 * `gatehouse masking discover --target T`: sample a target's columns and print those holding
 * PII, for review into column rules (CONTRACT section 1). Only counts are printed, never a
 * sampled value.
 */
const discover = command({
  name: 'discover',
  summary:
    "sample a target's columns (read-only, as its configured role) and print those whose values the detectors recognise, for review into column rules",
  options: {
    target: { type: 'string', value: 'T', required: true, help: 'the target to sample' },
    sample: {
      type: 'string',
      value: 'N',
      default: '200',
      help: 'rows sampled per table (1 to 10000)',
    },
    json: { type: 'boolean', default: false, help: 'print JSON' },
    config: configOption,
  },
  exits:
    '0 done (whether or not anything was found), 1 the target cannot be read, 2 usage or config error',
  async run({ values }, io) {
    const sample = Number(values.sample);
    if (!Number.isInteger(sample) || sample < 1 || sample > 10_000) {
      throw new UsageError(`--sample ${values.sample} is not a whole number from 1 to 10000`);
    }
    const config = await loadConfig(requireConfig(values.config));
    const target = Object.hasOwn(config.targets, values.target)
      ? config.targets[values.target]
      : undefined;
    if (!target) {
      throw new UsageError(
        `no target named ${values.target} (targets: ${Object.keys(config.targets).join(', ') || 'none'})`,
      );
    }
    const kind = TARGET_KINDS.find((k) => k.kind === target.kind);
    const instance = kind?.open(kindEnv(config, kind, true));
    try {
      if (!instance?.discover) {
        throw new UsageError(
          `target ${values.target} is of kind ${target.kind}, which holds no columns to sample`,
        );
      }
      let found;
      try {
        found = await instance.discover(target, { sample });
      } catch (err) {
        io.err.write(`gatehouse masking discover: ${(err as Error).message}\n`);
        return 1;
      }
      if (values.json) {
        io.out.write(JSON.stringify({ target: values.target, ...found }, null, 2) + '\n');
        return 0;
      }
      io.out.write(
        `${values.target}: ${found.tables} tables, ${found.columns} columns, up to ${sample} rows each\n`,
      );
      if (found.found.length === 0) {
        io.out.write('no column looks like it holds PII\n');
        return 0;
      }
      const name = (c: (typeof found.found)[number]) => `${c.schema}.${c.table}.${c.column}`;
      const width = Math.max(...found.found.map((c) => name(c).length));
      for (const c of found.found) {
        io.out.write(
          `  ${safe(name(c)).padEnd(width)}  ${c.detector.padEnd(12)}  ${c.hits}/${c.sampled} sampled values\n`,
        );
      }
      const rules = found.found.map((c) => JSON.stringify(`${c.table}.${c.column}`));
      io.out.write(
        `\nreview, then add to a masking profile:\n  columns: [${[...new Set(rules)].join(', ')}]\n`,
      );
      return 0;
    } finally {
      await instance?.close();
    }
  },
});

export const masking: Group = {
  name: 'masking',
  summary: 'what masking should cover, found on the targets',
  commands: [discover],
};
