import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { ApprovalRefused, type ApprovalService, type Person } from '../approvals/service.js';
import type { ApprovalRecord, GrantRecord } from '../approvals/types.js';
import { log } from '../kernel/log.js';
import { sendJson } from './respond.js';

/**
 * The approvers' API (what `gatehouse approvals` calls), beside MCP on the HTTP server:
 *
 *   GET  /approvals                  approvals the caller may answer, and its own requests
 *   GET  /approvals/{id}
 *   POST /approvals/{id}/approve     { reason? }
 *   POST /approvals/{id}/deny        { reason? }
 *   GET  /grants                     open grants the caller holds or may revoke
 *   POST /grants/{id}/revoke
 *
 * The caller is the bearer token's identity, checked exactly as for MCP; there is no other
 * way to answer (no state file edit, no tool argument a model could fill in). The service
 * refuses the requester's own answer, a non-approver's, and an answer to a decided or
 * expired approval (403, 409).
 *
 * What approvers see of a call is its audited input (the SQL, the argv), never the held
 * arguments' other parts nor a result.
 */

export const APPROVALS_PATH = '/approvals';
export const GRANTS_PATH = '/grants';

const Answer = z.strictObject({ reason: z.string().max(1_000).optional() });

/** The API's own routes; false when the path is not one of them. */
export function isApprovalsPath(path: string): boolean {
  return (
    path === APPROVALS_PATH ||
    path.startsWith(`${APPROVALS_PATH}/`) ||
    path === GRANTS_PATH ||
    path.startsWith(`${GRANTS_PATH}/`)
  );
}

export async function serveApprovals(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  who: Person,
  approvals: ApprovalService,
  readBody: () => Promise<unknown>,
): Promise<void> {
  const parts = path.split('/').filter(Boolean);
  try {
    if (parts[0] === 'approvals') {
      if (parts.length === 1) {
        if (req.method !== 'GET') return notAllowed(res, 'GET');
        const list = await approvals.visibleTo(who);
        return sendJson(res, 200, { approvals: list.map((r) => approvalView(r, r.mayAnswer)) });
      }
      const id = parts[1] ?? '';
      if (parts.length === 2) {
        if (req.method !== 'GET') return notAllowed(res, 'GET');
        const rec = (await approvals.visibleTo(who)).find((r) => r.id === id);
        if (!rec) return problem(res, 404, `no approval ${id} visible to ${who.sub}`);
        return sendJson(res, 200, { approval: approvalView(rec, rec.mayAnswer) });
      }
      const verb = parts[2];
      if (parts.length === 3 && (verb === 'approve' || verb === 'deny')) {
        if (req.method !== 'POST') return notAllowed(res, 'POST');
        const body = await readBody();
        if (body === undefined) return; // readBody answered (415, 413, 400)
        const parsed = Answer.safeParse(body ?? {});
        if (!parsed.success) {
          return problem(res, 400, 'the body is { "reason"?: string (at most 1000 characters) }');
        }
        const rec = await approvals.answer(id, who, verb, parsed.data.reason, 'api');
        return sendJson(res, 200, { approval: approvalView(rec, false) });
      }
    }
    if (parts[0] === 'grants') {
      if (parts.length === 1) {
        if (req.method !== 'GET') return notAllowed(res, 'GET');
        return sendJson(res, 200, {
          grants: (await approvals.grantsVisibleTo(who)).map(grantView),
        });
      }
      if (parts.length === 3 && parts[2] === 'revoke') {
        if (req.method !== 'POST') return notAllowed(res, 'POST');
        return sendJson(res, 200, {
          grant: grantView(await approvals.revokeGrant(parts[1] ?? '', who)),
        });
      }
    }
    return problem(res, 404, `not found: ${path}`);
  } catch (err) {
    if (err instanceof ApprovalRefused) return problem(res, err.status, err.message);
    log.error({ err: (err as Error)?.message ?? String(err), path }, 'approvals API failed');
    return problem(res, 500, 'internal error; see the gateway log');
  }
}

/** An approval as approvers see it: the call's audited input, never its held args or result. */
export function approvalView(r: ApprovalRecord, mayAnswer: boolean) {
  return {
    id: r.id,
    status: r.status,
    requester: r.requester,
    tool: r.tool,
    target: r.target,
    operation: r.operation,
    input: r.input,
    ...(r.purpose !== undefined ? { purpose: r.purpose } : {}),
    rule: r.rule,
    ruleReason: r.ruleReason,
    approvers: r.approvers,
    quorum: r.quorum,
    answers: r.answers.map((a) => ({
      by: a.by,
      answer: a.answer,
      ...(a.reason !== undefined ? { reason: a.reason } : {}),
      at: new Date(a.at).toISOString(),
      via: a.via,
    })),
    createdAt: new Date(r.createdAt).toISOString(),
    expiresAt: new Date(r.expiresAt).toISOString(),
    ...(r.grantMs !== undefined ? { grantMs: r.grantMs } : {}),
    ...(r.consumedAt !== undefined
      ? { consumedAt: new Date(r.consumedAt).toISOString(), consumedBy: r.consumedBy }
      : {}),
    ...(r.trace !== undefined ? { trace: r.trace } : {}),
    mayAnswer,
  };
}

export function grantView(g: GrantRecord) {
  return {
    id: g.id,
    sub: g.sub,
    tool: g.tool,
    target: g.target,
    operation: g.operation,
    rule: g.rule,
    approvalId: g.approvalId,
    createdAt: new Date(g.createdAt).toISOString(),
    expiresAt: new Date(g.expiresAt).toISOString(),
    ...(g.revokedAt !== undefined
      ? { revokedAt: new Date(g.revokedAt).toISOString(), revokedBy: g.revokedBy }
      : {}),
  };
}

function problem(res: ServerResponse, status: number, message: string): void {
  sendJson(res, status, { error: { status, message } });
}

function notAllowed(res: ServerResponse, allow: string): void {
  res.setHeader('Allow', allow);
  problem(res, 405, `method not allowed (allowed: ${allow})`);
}
