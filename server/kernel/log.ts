import { pino, type Logger } from 'pino';

/**
 * The process logger. It writes to stderr (fd 2) only: in stdio mode stdout is the MCP
 * channel and a single stray byte there corrupts the protocol stream.
 */
export const log: Logger = pino(
  {
    name: 'gatehouse',
    level: process.env.GATEHOUSE_LOG_LEVEL ?? 'info',
    // Defence in depth: even if a secret-bearing object reaches a log call, these keys are cut.
    redact: {
      paths: [
        'password',
        '*.password',
        'token',
        '*.token',
        'privateKey',
        '*.privateKey',
        'authorization',
        '*.authorization',
      ],
      censor: '[redacted]',
    },
  },
  pino.destination({ fd: 2, sync: true }),
);
