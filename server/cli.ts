#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AuditIntegrityError } from '../recordings/audit.js';
import { approvals } from './cli/approvals.js';
import { masking } from './cli/masking.js';
import { audit } from './cli/audit.js';
import { dispatch, UsageError, type Program } from './cli/command.js';
import { policy } from './cli/policy.js';
import { recordings } from './cli/recordings.js';
import { demo, serve } from './cli/serve.js';
import { targets } from './cli/targets.js';
import { token } from './cli/token.js';
import { ConfigError, GovernanceError } from './kernel/errors.js';
import { packageRoot } from './kernel/paths.js';

/**
 * The `gatehouse` command (CONTRACT section 1): one module per command group under cli/,
 * each command declared once (its options are what parseArgs reads and what --help shows).
 * Exit codes: 0 ok, 1 a check failed or the operation was refused, 2 usage or config error.
 * In `serve`/`demo` over stdio nothing but MCP messages goes to stdout.
 */
const gatehouse: Program = {
  name: 'gatehouse',
  version: () =>
    (
      JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as {
        version: string;
      }
    ).version,
  entries: [serve, demo, token, policy, targets, masking, audit, recordings, approvals],
  notes: [
    'gatehouse approvals talks to a running HTTP server (serve --transport http) with your own token.',
  ],
};

const io = { out: process.stdout, err: process.stderr };

// `gatehouse audit tail | head`: the reader went away, which is a normal end for a reader
// command. (serve never gets here: its stdout is the MCP channel, handled by the transport.)
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

dispatch(gatehouse, process.argv.slice(2), io).then(
  (code) => {
    // serve/demo resolve only when the session ends; everything else exits now.
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      // One line for the problem, one for where to read more: not the whole usage.
      const where = ['gatehouse', ...err.path, '--help'].join(' ');
      io.err.write(`gatehouse: ${err.message}\nsee '${where}'\n`);
      process.exitCode = 2;
    } else if (err instanceof ConfigError) {
      io.err.write(err.issues.map((i) => `gatehouse: ${i}`).join('\n') + '\n');
      process.exitCode = 2;
    } else if (err instanceof AuditIntegrityError) {
      // The log cannot be continued (torn, edited, held by another process): refused.
      io.err.write(`gatehouse: ${err.message}\n`);
      process.exitCode = 1;
    } else if (err instanceof GovernanceError) {
      io.err.write(`gatehouse: ${err.publicText}\n`);
      process.exitCode = 1;
    } else {
      io.err.write(`gatehouse: ${(err as Error)?.message ?? String(err)}\n`);
      process.exitCode = 2;
    }
  },
);
