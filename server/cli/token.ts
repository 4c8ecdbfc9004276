import { loadConfig } from '../config.js';
import { loadDevIssuer } from '../identity/dev-issuer.js';
import { ConfigError } from '../kernel/errors.js';
import { parseDuration } from '../kernel/units.js';
import { command, configOption, requireConfig, UsageError } from './command.js';

/** `gatehouse token`: a JWT from the local dev issuer, for demos and tests. */
export const token = command({
  name: 'token',
  summary: 'mint a token from the local dev issuer (identity.devIssuer) and print it on stdout',
  details: ['For demos and tests, not production: the key lives in identity.devIssuer.keyFile.'],
  options: {
    sub: { type: 'string', value: 'S', required: true, help: "the token's subject" },
    group: {
      type: 'string',
      value: 'G',
      multiple: true,
      default: [],
      help: 'a group in the groups claim',
    },
    ttl: { type: 'string', value: 'DURATION', default: '15m', help: 'lifetime, e.g. 90s, 15m, 1h' },
    config: configOption,
  },
  async run({ values }, io) {
    const ttlMs = parseDuration(values.ttl);
    if (ttlMs === undefined)
      throw new UsageError(`--ttl ${values.ttl} is not a duration (e.g. 15m, 1h)`);
    const config = await loadConfig(requireConfig(values.config));
    const dev = config.identity.devIssuer;
    if (!dev) throw new ConfigError(`${config.file}: identity.devIssuer is not configured`);
    const issuer = await loadDevIssuer(dev.keyFile, dev.issuer, { create: true });
    const jwt = await issuer.mint({
      sub: values.sub,
      groups: values.group,
      ttlSec: Math.ceil(ttlMs / 1000),
      audience: config.identity.audience,
    });
    io.out.write(jwt + '\n');
    return 0;
  },
});
