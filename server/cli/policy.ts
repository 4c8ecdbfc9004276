import path from 'node:path';
import type { Principal } from '../../policies/engine.js';
import type { PolicySet } from '../../policies/load.js';
import { PolicyFile, type PolicyTest } from '../../policies/schema.js';
import { explainOutput, type ExplainOutput } from '../../tools/explain/definition.js';
import type { GatehouseConfig } from '../config.js';
import { openGateway } from '../gateway.js';
import { ConfigError, GovernanceError } from '../kernel/errors.js';
import { loadYamlFile } from '../kernel/yaml.js';
import {
  checkSecrets,
  formatFinding,
  PolicyMistakes,
  refuseErrors,
  type Finding,
} from '../policy-lint.js';
import { loadGateway } from '../runtime.js';
import {
  command,
  configOption,
  plural,
  requireConfig,
  UsageError,
  type Group,
  type Io,
} from './command.js';

/** `gatehouse policy check|test|explain`: the policies, offline; no target is touched. */

type Decide = (
  principal: Principal,
  call: { tool: string; input: Record<string, unknown> },
) => Promise<ExplainOutput>;

/**
 * The decision a call would get, as the `explain` tool gives it: the one place the CLI asks,
 * and it asks the gateway's own decision point, so `policy test` and `policy explain` say
 * what the real call gets. Not live: the tools classify from the text alone and never
 * connect to a target.
 */
function decider(config: GatehouseConfig, policies: PolicySet): Decide {
  const { decisions } = openGateway(config, policies.engine, {
    live: false,
    profiles: policies.profiles,
  });
  return async (principal, call) =>
    explainOutput(await decisions.call(principal, call.tool, call.input, 'input'));
}

const check = command({
  name: 'check',
  summary: 'validate the config and every policy file, without starting anything',
  options: { config: configOption },
  exits: '0 valid, 1 invalid (one file:line:col: message line per problem on stdout), 2 no config',
  async run({ values }, io) {
    const warn = (ws: readonly Finding[]) =>
      ws.forEach((w) => io.err.write(`gatehouse: ${formatFinding(w)}\n`));
    try {
      const { config, policies, warnings } = await loadGateway(requireConfig(values.config));
      // Every secret reference resolved, never printed: unset warns, too short is an error.
      warn(refuseErrors([...warnings, ...(await checkSecrets(config))]));
      io.out.write(
        `ok: ${plural(policies.engine.rules.length, 'rule')} in ${plural(policies.files.length, 'file')}, ` +
          `${plural(Object.keys(config.targets).length, 'target')}, ${plural(policies.tests.length, 'test')}\n`,
      );
      return 0;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      if (err instanceof PolicyMistakes) warn(err.warnings);
      io.out.write(err.issues.join('\n') + '\n');
      return 1;
    }
  },
});

const test = command({
  name: 'test',
  summary:
    "run the policies' test cases (tests: in the policy files) against the configured policies",
  details: [
    'With FILEs, only the tests in those files run, still against the configured policies (a file that is not among them is noted on stderr).',
  ],
  positionals: [{ name: 'FILE', variadic: true, help: 'run the tests in these files instead' }],
  options: { config: configOption },
  exits: '0 every test passed, 1 a test failed, 2 usage or config error',
  async run({ values, positionals }, io) {
    const { config, policies, warnings } = await loadGateway(requireConfig(values.config));
    warnings.forEach((w) => io.err.write(`gatehouse: ${formatFinding(w)}\n`));
    const cases =
      positionals.length > 0
        ? await loadTestsFrom(
            positionals.map((p) => path.resolve(p)),
            policies.files,
            io,
          )
        : policies.tests;
    const decide = decider(config, policies);
    let passed = 0;
    let failed = 0;
    for (const { test, where } of cases) {
      const principal = {
        sub: test.identity.sub,
        groups: test.identity.groups,
        claims: test.identity.claims ?? {},
      };
      let got: { effect: string; rule: string; reason: string };
      try {
        got = await decide(principal, { tool: test.call.tool, input: test.call.input });
      } catch (err) {
        if (!(err instanceof GovernanceError)) throw err;
        got = { effect: 'error', rule: '-', reason: `${err.code}: ${err.message}` };
      }
      const ok =
        got.effect === test.expect.effect &&
        (test.expect.rule === undefined || test.expect.rule === got.rule);
      if (ok) {
        passed++;
        io.out.write(`ok - ${test.name}\n`);
      } else {
        failed++;
        io.out.write(
          `not ok - ${test.name} (${where}): expected ${test.expect.effect}${test.expect.rule ? ` by ${test.expect.rule}` : ''}, ` +
            `got ${got.effect} by ${got.rule}: ${got.reason}\n`,
        );
      }
    }
    io.out.write(`${passed} passed, ${failed} failed\n`);
    return failed > 0 ? 1 : 0;
  },
});

async function loadTestsFrom(files: string[], configured: readonly string[], io: Io) {
  const out: Array<{ file: string; test: PolicyTest; where: string }> = [];
  const loaded = new Set(configured.map((f) => path.resolve(f)));
  for (const file of files) {
    const { value, locate } = await loadYamlFile(file, PolicyFile);
    if (!loaded.has(file) && (value.rules.length > 0 || Object.keys(value.masking).length > 0)) {
      io.err.write(
        `gatehouse: note: ${file} is not among the config's policies: its rules and masking are ` +
          'not loaded, and its tests run against the configured policies\n',
      );
    }
    value.tests.forEach((test, i) => out.push({ file, test, where: locate(['tests', i]) }));
  }
  return out;
}

const explain = command({
  name: 'explain',
  summary:
    'print, as JSON, the decision a hypothetical call would get (effect, rule, reason, limits, masking), without executing it',
  details: [
    'Like `kubectl auth can-i`, the exit code answers "may this call run?": 0 when the decision is allow, and also approve (the call may run once a human approves it), 1 when it is deny or the call is refused anyway (invalid input, an unknown tool, a tool that refuses it after policy).',
  ],
  options: {
    sub: { type: 'string', value: 'S', required: true, help: "the caller's subject" },
    group: {
      type: 'string',
      value: 'G',
      multiple: true,
      default: [],
      help: "one of the caller's groups",
    },
    tool: { type: 'string', value: 'T', required: true, help: 'the tool, e.g. postgres_query' },
    input: {
      type: 'string',
      value: 'JSON',
      required: true,
      help: `the tool's input as a JSON object, e.g. '{"target":"app-db","sql":"SELECT 1"}'`,
    },
    config: configOption,
  },
  exits: '0 allow or approve, 1 deny or refused, 2 usage or config error (e.g. --input not JSON)',
  async run({ values }, io) {
    let input: unknown;
    try {
      input = JSON.parse(values.input);
    } catch {
      throw new UsageError('--input is not valid JSON');
    }
    if (!input || typeof input !== 'object' || Array.isArray(input))
      throw new UsageError('--input must be a JSON object');
    const { config, policies } = await loadGateway(requireConfig(values.config));
    try {
      const decision = await decider(config, policies)(
        { sub: values.sub, groups: values.group, claims: {} },
        { tool: values.tool, input: input as Record<string, unknown> },
      );
      io.out.write(JSON.stringify(decision, null, 2) + '\n');
      return decision.effect === 'deny' || decision.refusal !== undefined ? 1 : 0;
    } catch (err) {
      if (!(err instanceof GovernanceError)) throw err;
      io.out.write(JSON.stringify({ error: err.code, reason: err.message }, null, 2) + '\n');
      return 1;
    }
  },
});

export const policy: Group = {
  name: 'policy',
  summary: 'check, test and explain the policies offline; nothing is executed',
  commands: [check, test, explain],
};
