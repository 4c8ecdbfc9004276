import {
  auditTail,
  auditVerify,
  auditVerifyChains,
  TAIL_DECISIONS,
  type TailDecision,
} from '../../recordings/commands.js';
import { loadConfig } from '../config.js';
import { parseDuration } from '../kernel/units.js';
import { nearest } from '../kernel/yaml.js';
import {
  command,
  configOption,
  requireConfig,
  UsageError,
  type Group,
  type Option,
} from './command.js';

/** `gatehouse audit verify|tail`: read the audit log; the config only says where it is. */

const fileOption = {
  type: 'string',
  value: 'F',
  help: "one audit chain file to read (default: every chain the config's audit.file covers)",
} as const satisfies Option;

/**
 * The log named by --file (that one file), else the config's audit.file, which covers every
 * writer's chain beside it (CONTRACT section 2). The config must then exist.
 */
async function auditFile(values: {
  file: string | undefined;
  config: string;
}): Promise<{ file: string; chains: boolean }> {
  if (values.file !== undefined) return { file: values.file, chains: false };
  const config = await loadConfig(requireConfig(values.config, '--file F'));
  return { file: config.audit.file, chains: true };
}

const verify = command({
  name: 'verify',
  summary: "recompute the audit log's hash chains",
  details: [
    "With --config, every chain the config's audit.file covers: the file itself and each writer's chain beside it (audit.<writer>.jsonl), one line per chain. A torn last line (a crash mid-write) is reported as such and fails the check; the other chains are checked all the same.",
  ],
  options: { config: configOption, file: fileOption },
  exits:
    '0 every chain is intact, 1 one is broken or torn (its file and first bad line are named) or the log is missing, 2 usage or config error',
  async run({ values }, io) {
    const { file, chains } = await auditFile(values);
    return chains ? auditVerifyChains(file, io) : auditVerify(file, io);
  },
});

const tail = command({
  name: 'tail',
  summary: 'print the audit log, one readable line per entry (or the raw JSON lines)',
  details: [
    'A line shows time, subject, tool, target, operation, the decision (effect and rule; "refused (input)" or "refused (identity)" for a call refused before policy looked at it), the outcome, and what the call asked for (sql: the statement, on one line, cut at 160 characters). Control, bidi and invisible characters are shown as escapes (\\n, \\x1b, \\u202e).',
    "With --config, every writer's chain the config's audit.file covers, merged in time order; with -f, chains that appear later are followed too.",
    'Filters combine; -n applies to the lines that pass them. With -f a log that does not exist yet is waited for.',
  ],
  options: {
    config: configOption,
    file: fileOption,
    follow: {
      type: 'boolean',
      short: 'f',
      default: false,
      help: 'keep reading as lines are added, waiting for the log if it is not there yet (Ctrl-C stops)',
    },
    lines: {
      type: 'string',
      short: 'n',
      value: 'N',
      help: 'only the last N lines (of those the filters pass) of what the log holds now; default all',
    },
    since: {
      type: 'string',
      value: 'WHEN',
      help: 'only lines from this time on: a duration back from now (30s, 15m, 1h, 2d) or an ISO time (2025-01-31T09:00:00Z)',
    },
    sub: { type: 'string', value: 'S', help: 'only lines for this subject' },
    tool: { type: 'string', value: 'T', help: 'only lines for this tool' },
    decision: {
      type: 'string',
      value: 'D',
      help: `only lines with this decision: ${TAIL_DECISIONS.join(', ')} (refused: invalid input or a refused token, before policy; deny: a policy's denial)`,
    },
    json: { type: 'boolean', default: false, help: 'the raw JSON lines' },
  },
  exits: '0 ok, 1 the log cannot be read, 2 usage or config error (a missing log, without -f)',
  async run({ values }, io) {
    const lines = values.lines === undefined ? undefined : lineCount(values.lines);
    const since = values.since === undefined ? undefined : sinceTime(values.since, Date.now());
    const decision = values.decision === undefined ? undefined : tailDecision(values.decision);
    const { file, chains } = await auditFile(values);
    const controller = new AbortController();
    const stop = () => controller.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      return await auditTail(
        file,
        {
          follow: values.follow,
          json: values.json,
          chains,
          signal: controller.signal,
          ...(lines !== undefined ? { lines } : {}),
          ...(since !== undefined ? { since } : {}),
          ...(values.sub !== undefined ? { sub: values.sub } : {}),
          ...(values.tool !== undefined ? { tool: values.tool } : {}),
          ...(decision !== undefined ? { decision } : {}),
        },
        io,
      );
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  },
});

function lineCount(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`-n takes a number of lines, not "${text}"`);
  return Number(text);
}

const DAYS = /^(\d+(?:\.\d+)?)\s*d$/;

/**
 * `--since`: a duration back from now, as the config writes durations (plus days, which a
 * look back often needs), or an ISO 8601 time. A bare number is neither: it is refused
 * rather than read as milliseconds or as a year.
 */
function sinceTime(text: string, now: number): number {
  const days = DAYS.exec(text.trim());
  const ms = days ? parseDuration(`${Number(days[1]) * 24}h`) : parseDuration(text);
  if (ms !== undefined) return now - ms;
  if (/^\d{4}-\d{2}-\d{2}/.test(text.trim())) {
    const t = Date.parse(text.trim());
    if (Number.isFinite(t)) return t;
  }
  throw new UsageError(
    `--since takes a duration (30s, 15m, 1h, 2d) or an ISO time (2025-01-31T09:00:00Z), not "${text}"`,
  );
}

function tailDecision(text: string): TailDecision {
  const found = TAIL_DECISIONS.find((d) => d === text);
  if (found) return found;
  // Past tenses ("denied", "allowed") are too far from the names for an edit distance; the
  // four names differ in their first three letters.
  const near =
    nearest(text, TAIL_DECISIONS) ??
    (text.length >= 3
      ? TAIL_DECISIONS.find((d) => d.startsWith(text.slice(0, 3).toLowerCase()))
      : undefined);
  throw new UsageError(
    `--decision takes ${TAIL_DECISIONS.slice(0, -1).join(', ')} or ${TAIL_DECISIONS.at(-1)}, not "${text}"` +
      (near === undefined ? '' : ` (did you mean "${near}"?)`),
  );
}

export const audit: Group = {
  name: 'audit',
  summary: 'the hash-chained audit log: verify it, read it',
  commands: [verify, tail],
};
