import { command } from './command.js';

/**
 * `gatehouse approvals`: out-of-band approvals (CONTRACT section 1) are not in this release.
 * The command exists so that scripts written for it get a clear refusal, not "unknown command".
 */
export const approvals = command({
  name: 'approvals',
  summary:
    'out-of-band approvals: not in this release; calls whose rule says approve are refused with APPROVAL_UNAVAILABLE',
  options: {},
  strict: false,
  exits: '2 always (not in this release)',
  async run(_args, io) {
    io.err.write(
      'gatehouse approvals: out-of-band approvals are not implemented in this version; calls whose rule says "approve" are refused with APPROVAL_UNAVAILABLE\n',
    );
    return 2;
  },
});
