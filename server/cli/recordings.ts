import { recordingsList, recordingsReplay, recordingsShow } from '../../recordings/commands.js';
import { loadConfig } from '../config.js';
import {
  command,
  configOption,
  requireConfig,
  UsageError,
  type Group,
  type Option,
} from './command.js';

/** `gatehouse recordings list|show|replay`: read the per-session recordings. */

const dirOption = {
  type: 'string',
  value: 'D',
  help: "the recordings folder (default: the config's recordings.dir)",
} as const satisfies Option;

const idArgument = {
  name: 'ID',
  required: true,
  help: 'a session id (a unique prefix will do)',
} as const;

async function recordingsDir(values: { dir: string | undefined; config: string }): Promise<string> {
  if (values.dir !== undefined) return values.dir;
  const config = await loadConfig(requireConfig(values.config, '--dir D'));
  return config.recordings.dir;
}

const list = command({
  name: 'list',
  summary: 'list the recorded sessions: id, start, number of calls, subject',
  options: { config: configOption, dir: dirOption },
  async run({ values }, io) {
    return recordingsList(await recordingsDir(values), io);
  },
});

const show = command({
  name: 'show',
  summary: 'print one session: who, which client, and each call with its decision and result',
  positionals: [idArgument],
  options: { config: configOption, dir: dirOption },
  exits: '0 ok, 2 usage or config error (an unknown or ambiguous id)',
  async run({ values, positionals }, io) {
    return recordingsShow(await recordingsDir(values), positionals[0]!, io);
  },
});

const replay = command({
  name: 'replay',
  summary: 'print one session call by call in time order, pausing for the recorded gaps',
  positionals: [idArgument],
  options: {
    config: configOption,
    dir: dirOption,
    speed: {
      type: 'string',
      value: 'N',
      default: '1',
      help: 'how much faster than recorded (0: no pauses); a pause is at most 2 s',
    },
  },
  exits: '0 ok, 2 usage or config error (an unknown or ambiguous id)',
  async run({ values, positionals }, io) {
    const speed = Number(values.speed);
    if (!Number.isFinite(speed) || speed < 0)
      throw new UsageError('--speed takes a number >= 0 (0: no pauses)');
    const dir = await recordingsDir(values);
    const controller = new AbortController();
    process.once('SIGINT', () => controller.abort());
    return recordingsReplay(dir, positionals[0]!, { speed, signal: controller.signal }, io);
  },
});

export const recordings: Group = {
  name: 'recordings',
  summary: 'the per-session recordings: what each agent session saw',
  commands: [list, show, replay],
};
