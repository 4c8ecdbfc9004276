import { targetsCheck } from '../targets-command.js';
import { command, configOption, requireConfig, type Group } from './command.js';

/** `gatehouse targets check`: connect to the targets as the gateway would. */

const check = command({
  name: 'check',
  summary:
    'connect to each target (or the named ones) as the gateway would, say what works, and warn about over-powered login roles (superuser, powerful predefined roles, CREATEROLE, BYPASSRLS, owned tables)',
  positionals: [{ name: 'NAME', variadic: true, help: 'check only these targets' }],
  options: {
    config: configOption,
    strict: { type: 'boolean', default: false, help: 'a warning fails the check too' },
  },
  exits:
    '0 every target usable, 1 a target cannot be used (or, with --strict, anything warned), 2 usage or config error (an unknown target name)',
  async run({ values, positionals }, io) {
    return targetsCheck(requireConfig(values.config), positionals, {
      strict: values.strict,
      out: io.out,
    });
  },
});

export const targets: Group = {
  name: 'targets',
  summary: 'the targets of the config, checked from this machine',
  commands: [check],
};
