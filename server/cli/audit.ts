import { auditTail, auditVerify } from '../../recordings/commands.js';
import { loadConfig } from '../config.js';
import { command, configOption, requireConfig, type Group, type Option } from './command.js';

/** `gatehouse audit verify|tail`: read the audit log; the config only says where it is. */

const fileOption = {
  type: 'string',
  value: 'F',
  help: "the audit log to read (default: the config's audit.file)",
} as const satisfies Option;

/** The log named by --file, else by the config (which must then exist). */
async function auditFile(values: { file: string | undefined; config: string }): Promise<string> {
  if (values.file !== undefined) return values.file;
  const config = await loadConfig(requireConfig(values.config, '--file F'));
  return config.audit.file;
}

const verify = command({
  name: 'verify',
  summary: "recompute the audit log's hash chain",
  options: { config: configOption, file: fileOption },
  exits:
    '0 the chain is intact, 1 it is broken (the first bad line is named) or the log is missing, 2 usage or config error',
  async run({ values }, io) {
    return auditVerify(await auditFile(values), io);
  },
});

const tail = command({
  name: 'tail',
  summary: 'print the audit log, one readable line per entry (or the raw JSON lines)',
  options: {
    config: configOption,
    file: fileOption,
    follow: {
      type: 'boolean',
      short: 'f',
      default: false,
      help: 'keep reading as lines are added (Ctrl-C stops)',
    },
    sub: { type: 'string', value: 'S', help: 'only lines for this subject' },
    tool: { type: 'string', value: 'T', help: 'only lines for this tool' },
    decision: {
      type: 'string',
      value: 'D',
      help: 'only lines with this effect: allow, deny, approve',
    },
    json: { type: 'boolean', default: false, help: 'the raw JSON lines' },
  },
  exits: '0 ok, 1 the log cannot be read, 2 usage or config error (a missing log)',
  async run({ values }, io) {
    const file = await auditFile(values);
    const controller = new AbortController();
    process.once('SIGINT', () => controller.abort());
    return auditTail(
      file,
      {
        follow: values.follow,
        json: values.json,
        signal: controller.signal,
        ...(values.sub ? { sub: values.sub } : {}),
        ...(values.tool ? { tool: values.tool } : {}),
        ...(values.decision ? { decision: values.decision } : {}),
      },
      io,
    );
  },
});

export const audit: Group = {
  name: 'audit',
  summary: 'the hash-chained audit log: verify it, read it',
  commands: [verify, tail],
};
