import { createHash, randomBytes } from 'node:crypto';
import { compileGlobs } from '../../policies/glob.js';
import type { Approval } from '../../policies/schema.js';
import { skeleton } from '../../policies/skeleton.js';
import { canonicalJson } from '../../recordings/canonical.js';
import type { ApprovalEventName, AuditRecord } from '../../recordings/audit.js';
import { wellFormedDeep } from '../bounds.js';
import { GovernanceError } from '../kernel/errors.js';
import { log } from '../kernel/log.js';
import { head } from '../kernel/text.js';
import type {
  ApprovalAnswer,
  ApprovalRecord,
  Approvers,
  GrantRecord,
  StateStore,
} from './types.js';

/**
 * Out-of-band approvals (CONTRACT sections 3 and 5): one exact call waits for people other
 * than its requester, through the state store that every gateway process of a deployment
 * shares. The pipeline asks (`request`), waits (`wait`, at most a rule's `hold` per tool call)
 * and runs the call once (`consume`); approvers answer through the HTTP API (`answer`).
 *
 * Every transition is a compare-and-set on the stored record (`StateStore.updateApproval`), so
 * two replicas answering or consuming at once cannot both win: an approval is used once, a
 * late answer to a decided or expired approval is refused, and the requester can never answer
 * its own request, whatever its groups (nor can a look-alike of its name).
 *
 * Each step is on the audit chain of the process that took it (`requested`, `answered`,
 * `approved`, `denied`, `expired`, `consumed`, `grant-used`, `grant-revoked`), and approvers
 * hear of requests and answers through the notifier (a webhook), which never blocks a call.
 */

/** A person as the approval sees it: who asked, who answers. */
export interface Person {
  readonly sub: string;
  readonly groups: readonly string[];
}

/** Everything about the call an approval binds to. */
export interface CallToApprove {
  readonly requester: Person;
  readonly session: string;
  readonly callId: string;
  readonly tool: string;
  readonly target: string | null;
  readonly operation: string;
  readonly input: unknown;
  readonly args: unknown;
  readonly rule: string;
  readonly ruleReason: string;
  readonly approval: Approval;
  readonly purpose?: string;
  readonly trace?: string;
}

export type ApprovalNotice =
  | { kind: 'approval.requested'; approval: ApprovalRecord }
  | { kind: 'approval.answered'; approval: ApprovalRecord; answer: ApprovalAnswer }
  | { kind: 'approval.expired'; approval: ApprovalRecord };

export interface ApprovalNotifier {
  notify(event: ApprovalNotice): void;
  close(): Promise<void>;
}

/** A refused answer, revoke or lookup: the HTTP API maps `status` to its response. */
export class ApprovalRefused extends Error {
  constructor(
    readonly status: 404 | 403 | 409,
    message: string,
  ) {
    super(message);
    this.name = 'ApprovalRefused';
  }
}

/** Open (pending) approvals one identity may have at a time. */
export const MAX_PENDING_PER_REQUESTER = 16;
/** How long ended approvals and grants stay in the state (for `approvals list` and repeats). */
const RETAIN_MS = 24 * 3_600_000;
/** How often ended records are dropped from the state. */
const PRUNE_EVERY_MS = 10 * 60_000;
/** How often a waiting call reports progress. */
const TICK_MS = 5_000;
/** Waiters re-read the state at least this often, whatever the backend's notifications do. */
const RECHECK_MS = 1_000;

export interface ApprovalServiceOptions {
  /** The policy version approvals are bound to (see policyVersion). */
  readonly policyVersion: string;
  readonly audit: (rec: AuditRecord) => Promise<unknown>;
  readonly notifier?: ApprovalNotifier;
}

export class ApprovalService {
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly unwatch: () => void;
  private sweeper: NodeJS.Timeout | undefined;
  private prunedAt = 0;

  constructor(
    readonly store: StateStore,
    private readonly opts: ApprovalServiceOptions,
  ) {
    this.unwatch = store.watch((id) => this.wake(id));
    this.sweeper = setInterval(() => void this.sweep(), 5_000);
    this.sweeper.unref();
  }

  get policyVersion(): string {
    return this.opts.policyVersion;
  }

  /** The digest an approval binds to: tool, target and the arguments exactly as parsed. */
  static digest(tool: string, target: string | null, args: unknown): string {
    return sha256(canonicalJson(JSON.parse(JSON.stringify({ tool, target, args })) as unknown));
  }

  /** An open grant window for this call, if the rule gave one. */
  async findGrant(call: CallToApprove): Promise<GrantRecord | undefined> {
    if (call.approval.grant === undefined) return undefined;
    const now = Date.now();
    return (await this.store.listGrants()).find(
      (g) =>
        g.revokedAt === undefined &&
        now < g.expiresAt &&
        g.sub === call.requester.sub &&
        g.tool === call.tool &&
        g.target === call.target &&
        g.operation === call.operation &&
        g.rule === call.rule &&
        g.policyVersion === this.opts.policyVersion,
    );
  }

  /** An approval line for a call answered in band (no stored record: the call holds it). */
  async note(call: CallToApprove, approval: AuditApproval): Promise<void> {
    await this.opts.audit(callAudit(call, approval));
  }

  /** A grant window opened by an in-band approval (`approvers: client` with `grant`). */
  async grantInBand(call: CallToApprove, approvalId: string): Promise<void> {
    if (call.approval.grant === undefined) return;
    await this.openGrant({
      sub: call.requester.sub,
      tool: call.tool,
      target: call.target,
      operation: call.operation,
      rule: call.rule,
      policyVersion: this.opts.policyVersion,
      approvalId,
      approvers: call.approval.approvers,
      ms: call.approval.grant,
    });
  }

  /** Records that a grant let this call through without asking. */
  async useGrant(grant: GrantRecord, call: CallToApprove): Promise<void> {
    await this.opts.audit(
      callAudit(call, {
        id: grant.approvalId,
        approver: '-',
        answer: 'approve',
        event: 'grant-used',
        grant: grant.id,
      }),
    );
  }

  /**
   * A pending approval for this exact call: an open one for the same identity, digest and
   * policy version is joined (the agent re-sent the call), else a new one is created.
   */
  async request(call: CallToApprove): Promise<{ record: ApprovalRecord; joined: boolean }> {
    const digest = ApprovalService.digest(call.tool, call.target, call.args);
    const now = Date.now();
    const mine = (await this.store.listApprovals()).filter(
      (r) => r.requester.sub === call.requester.sub && r.status === 'pending' && now < r.expiresAt,
    );
    const same = (r: ApprovalRecord) =>
      r.requester.sub === call.requester.sub &&
      r.digest === digest &&
      r.policyVersion === this.opts.policyVersion &&
      r.rule === call.rule;
    if (mine.length >= MAX_PENDING_PER_REQUESTER && !mine.some(same)) {
      // Each pending approval is state every replica reads and approvers wade through: one
      // identity cannot bury the others' requests (or the state) under its own.
      throw new GovernanceError(
        'LIMIT_EXCEEDED',
        `${call.requester.sub} has ${mine.length} approvals waiting already (at most ` +
          `${MAX_PENDING_PER_REQUESTER}); wait for them to be answered or to expire`,
        { rule: call.rule },
      );
    }
    const a = call.approval;
    const fresh: ApprovalRecord = wellFormedDeep({
      id: newId('apr'),
      status: 'pending',
      createdAt: now,
      expiresAt: now + a.timeout,
      requester: { sub: call.requester.sub, groups: [...call.requester.groups] },
      session: call.session,
      callId: call.callId,
      tool: call.tool,
      target: call.target,
      operation: call.operation,
      input: call.input,
      args: call.args,
      digest,
      policyVersion: this.opts.policyVersion,
      rule: call.rule,
      ruleReason: call.ruleReason,
      ...(call.purpose !== undefined ? { purpose: call.purpose } : {}),
      ...(call.trace !== undefined ? { trace: call.trace } : {}),
      approvers: a.approvers,
      quorum: a.quorum,
      ...(a.grant !== undefined ? { grantMs: a.grant } : {}),
      answers: [],
    });
    // The same call again (sent twice, or at once to two replicas) joins the open approval.
    const { record, created } = await this.store.createApproval(fresh, same);
    await this.opts.audit(
      created
        ? recordAudit(record, {
            id: record.id,
            approver: '-',
            answer: 'pending',
            event: 'requested',
          })
        : callAudit(call, { id: record.id, approver: '-', answer: 'pending', event: 'joined' }),
    );
    if (created) this.opts.notifier?.notify({ kind: 'approval.requested', approval: record });
    return { record, joined: !created };
  }

  async get(id: string): Promise<ApprovalRecord | undefined> {
    const rec = await this.store.getApproval(id);
    return rec && (await this.expireIfDue(rec));
  }

  /**
   * Waits until the approval is decided, or `holdMs` passes, or `signal` aborts; returns the
   * record as it then stands (still `pending` when the hold ran out). `tick` is called about
   * every 5 s while waiting (progress notifications).
   */
  async wait(
    id: string,
    holdMs: number,
    signal: AbortSignal,
    tick?: (waitedMs: number, rec: ApprovalRecord) => void,
  ): Promise<ApprovalRecord> {
    const started = Date.now();
    const deadline = started + holdMs;
    let lastTick = started - TICK_MS; // the first look says "waiting" at once
    for (;;) {
      const rec = await this.get(id);
      if (!rec) throw new ApprovalRefused(404, `no approval ${id}`);
      const now = Date.now();
      if (rec.status !== 'pending' || now >= deadline || signal.aborted) return rec;
      if (tick && now - lastTick >= TICK_MS) {
        lastTick = now;
        tick(now - started, rec);
      }
      await this.changeOf(id, Math.min(deadline, rec.expiresAt) - now, signal);
    }
  }

  /** Resolves when the approval may have changed, after `ms` (at most RECHECK_MS), or on abort. */
  private changeOf(id: string, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(id);
      if (!set) this.waiters.set(id, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        set.delete(done);
        if (set.size === 0) this.waiters.delete(id);
        resolve();
      };
      const timer = setTimeout(done, Math.max(1, Math.min(ms, RECHECK_MS)));
      signal.addEventListener('abort', done, { once: true });
      set.add(done);
    });
  }

  private wake(id: string): void {
    for (const w of [...(this.waiters.get(id) ?? [])]) w();
  }

  /** An answer from an approver (CLI / HTTP API, or an elicitation on its own session). */
  async answer(
    id: string,
    who: Person,
    answer: 'approve' | 'deny',
    reason: string | undefined,
    via: ApprovalAnswer['via'],
  ): Promise<ApprovalRecord> {
    const current = await this.get(id);
    if (!current) throw new ApprovalRefused(404, `no approval ${id}`);
    const refusal = answerRefusal(current, who);
    if (refusal) throw new ApprovalRefused(403, refusal);
    const entry: ApprovalAnswer = wellFormedDeep({
      by: who.sub,
      groups: [...who.groups],
      answer,
      ...(reason !== undefined && reason !== '' ? { reason: head(reason, 1000) } : {}),
      at: Date.now(),
      via,
    });
    let conflict: string | undefined;
    const { record, changed } = await this.store.updateApproval(id, (rec) => {
      if (rec.status !== 'pending') {
        conflict = `approval ${id} is already ${rec.status}`;
        return undefined;
      }
      if (Date.now() >= rec.expiresAt) {
        conflict = `approval ${id} expired at ${new Date(rec.expiresAt).toISOString()}`;
        return undefined;
      }
      if (rec.answers.some((x) => samePerson(x.by, who.sub))) {
        conflict = `${who.sub} has already answered approval ${id}`;
        return undefined;
      }
      rec.answers.push(entry);
      if (answer === 'deny') rec.status = 'denied';
      else if (rec.answers.filter((x) => x.answer === 'approve').length >= rec.quorum) {
        rec.status = 'approved';
      }
      return rec;
    });
    if (!record) throw new ApprovalRefused(404, `no approval ${id}`);
    if (!changed) throw new ApprovalRefused(409, conflict ?? `approval ${id} was not changed`);
    const event: ApprovalEventName =
      record.status === 'approved'
        ? 'approved'
        : record.status === 'denied'
          ? 'denied'
          : 'answered';
    await this.opts.audit(
      recordAudit(record, {
        id,
        approver: who.sub,
        answer,
        event,
        ...(entry.reason !== undefined ? { reason: entry.reason } : {}),
      }),
    );
    if (record.status === 'approved' && record.grantMs !== undefined) {
      await this.openGrant({
        sub: record.requester.sub,
        tool: record.tool,
        target: record.target,
        operation: record.operation,
        rule: record.rule,
        policyVersion: record.policyVersion,
        approvalId: record.id,
        approvers: record.approvers,
        ms: record.grantMs,
      });
    }
    this.opts.notifier?.notify({ kind: 'approval.answered', approval: record, answer: entry });
    this.wake(id);
    return record;
  }

  /** A grant window from now, for what an approval (in band or stored) was given. */
  private async openGrant(
    g: Omit<GrantRecord, 'id' | 'createdAt' | 'expiresAt'> & { ms: number },
  ): Promise<void> {
    const { ms, ...rest } = g;
    const now = Date.now();
    await this.store.createGrant({
      ...rest,
      id: newId('grt'),
      createdAt: now,
      expiresAt: now + ms,
    });
  }

  /**
   * Uses an approved approval for the call `callId`: true for exactly one caller across every
   * process sharing the state; false when it was used already (or is not approved).
   */
  async consume(id: string, callId: string): Promise<boolean> {
    const { record, changed } = await this.store.updateApproval(id, (rec) => {
      // An approval is for use before its timeout: approved and left unused, it expires too.
      if (rec.status !== 'approved' || Date.now() >= rec.expiresAt) return undefined;
      rec.status = 'consumed';
      rec.consumedBy = callId;
      rec.consumedAt = Date.now();
      return rec;
    });
    if (changed && record) {
      await this.opts.audit(
        recordAudit(record, {
          id,
          approver: approversOf(record),
          answer: 'approve',
          event: 'consumed',
        }),
      );
    }
    return changed;
  }

  /** The result of the call that used the approval, for an await_approval that repeats. */
  async saveResult(id: string, result: unknown): Promise<void> {
    await this.store.updateApproval(id, (rec) => {
      if (rec.status !== 'consumed' || rec.result !== undefined) return undefined;
      rec.result = result;
      return rec;
    });
  }

  /**
   * Pending or approved-but-unused past its timeout: expired (not run), on record once,
   * whichever process sees it first.
   */
  private async expireIfDue(rec: ApprovalRecord): Promise<ApprovalRecord> {
    const open = (r: ApprovalRecord) => r.status === 'pending' || r.status === 'approved';
    if (!open(rec) || Date.now() < rec.expiresAt) return rec;
    const { record, changed } = await this.store.updateApproval(rec.id, (r) => {
      if (!open(r) || Date.now() < r.expiresAt) return undefined;
      r.status = 'expired';
      return r;
    });
    if (changed && record) {
      await this.opts.audit(
        recordAudit(record, { id: rec.id, approver: '-', answer: 'timeout', event: 'expired' }),
      );
      this.opts.notifier?.notify({ kind: 'approval.expired', approval: record });
      this.wake(rec.id);
    }
    return record ?? rec;
  }

  private async sweep(): Promise<void> {
    try {
      for (const rec of await this.store.listApprovals()) await this.expireIfDue(rec);
      // Pruning takes the store's lock (and, for the file, rewrites it): rarely is enough.
      if (Date.now() - this.prunedAt >= PRUNE_EVERY_MS) {
        this.prunedAt = Date.now();
        await this.store.prune(this.prunedAt, RETAIN_MS);
      }
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'approvals: sweep failed');
    }
  }

  /** Approvals this person may answer, and its own requests. */
  async visibleTo(who: Person): Promise<Array<ApprovalRecord & { mayAnswer: boolean }>> {
    const out: Array<ApprovalRecord & { mayAnswer: boolean }> = [];
    for (const rec of await this.store.listApprovals()) {
      const r = await this.expireIfDue(rec);
      const mayAnswer = r.status === 'pending' && answerRefusal(r, who) === undefined;
      if (mayAnswer || r.requester.sub === who.sub || isApprover(r.approvers, who)) {
        out.push({ ...r, mayAnswer });
      }
    }
    return out;
  }

  /** Open grants this person holds or may revoke (an approver of the rule that opened it). */
  async grantsVisibleTo(who: Person): Promise<GrantRecord[]> {
    const now = Date.now();
    return (await this.store.listGrants()).filter(
      (g) =>
        g.revokedAt === undefined &&
        now < g.expiresAt &&
        (g.sub === who.sub || isApprover(g.approvers, who)),
    );
  }

  async revokeGrant(id: string, who: Person): Promise<GrantRecord> {
    const grant = (await this.store.listGrants()).find((g) => g.id === id);
    if (!grant) throw new ApprovalRefused(404, `no grant ${id}`);
    if (grant.sub !== who.sub && !isApprover(grant.approvers, who)) {
      throw new ApprovalRefused(403, `${who.sub} may not revoke grant ${id}`);
    }
    const { record, changed } = await this.store.updateGrant(id, (g) => {
      if (g.revokedAt !== undefined || Date.now() >= g.expiresAt) return undefined;
      g.revokedAt = Date.now();
      g.revokedBy = who.sub;
      return g;
    });
    if (!record) throw new ApprovalRefused(404, `no grant ${id}`);
    if (!changed) throw new ApprovalRefused(409, `grant ${id} is already closed`);
    await this.opts.audit({
      kind: 'approval',
      callId: '-',
      session: '-',
      sub: record.sub,
      groups: [],
      tool: record.tool,
      target: record.target,
      operation: record.operation,
      input: null,
      decision: { effect: 'approve', rule: record.rule, reason: 'grant revoked' },
      approval: {
        id: record.approvalId,
        approver: who.sub,
        answer: 'revoke',
        event: 'grant-revoked',
        grant: id,
      },
      outcome: null,
      masked: null,
    });
    return record;
  }

  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    this.unwatch();
    for (const id of [...this.waiters.keys()]) this.wake(id);
    await this.opts.notifier?.close();
    await this.store.close();
  }
}

/** Why `who` may not answer `rec` (undefined: it may). */
function answerRefusal(rec: ApprovalRecord, who: Person): string | undefined {
  if (samePerson(rec.requester.sub, who.sub)) {
    return 'the requester cannot answer its own approval (a second person must decide)';
  }
  if (!isApprover(rec.approvers, who)) {
    return `${who.sub} is not an approver for rule ${rec.rule}`;
  }
  return undefined;
}

/** Is `who` among `approvers`? `client` approvals are answered in band, never here. */
export function isApprover(approvers: Approvers, who: Person): boolean {
  if (approvers === 'client') return false;
  const groups = new Set(approvers.groups ?? []);
  if (who.groups.some((g) => groups.has(g))) return true;
  const subjects = approvers.subjects ?? [];
  return subjects.length > 0 && compileGlobs(subjects)(who.sub);
}

/** One person, also through look-alike names (`alice` and `аlice` with a Cyrillic а). */
export function samePerson(a: string, b: string): boolean {
  return a === b || skeleton(a) === skeleton(b);
}

function approversOf(rec: ApprovalRecord): string {
  return rec.answers
    .filter((a) => a.answer === 'approve')
    .map((a) => a.by)
    .join(',');
}

export function newId(prefix: 'apr' | 'grt'): string {
  return `${prefix}_${randomBytes(16).toString('base64url')}`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The digest of a policy set's rules and masking profiles: what an approval was decided under. */
export function policyVersion(rules: unknown, profiles: unknown): string {
  return sha256(canonicalJson(JSON.parse(JSON.stringify({ rules, profiles })) as unknown));
}

export type AuditApproval = NonNullable<AuditRecord['approval']>;

/** What an approval line says of the call it is about. */
type AuditedCall = Omit<CallToApprove, 'args' | 'approval'>;

function callAudit(call: AuditedCall, approval: AuditApproval): AuditRecord {
  return {
    kind: 'approval',
    callId: call.callId,
    session: call.session,
    sub: call.requester.sub,
    groups: [...call.requester.groups],
    tool: call.tool,
    target: call.target,
    operation: call.operation,
    input: call.input,
    decision: { effect: 'approve', rule: call.rule, reason: call.ruleReason },
    approval,
    ...(call.purpose !== undefined ? { reason: call.purpose } : {}),
    ...(call.trace !== undefined ? { trace: call.trace } : {}),
    outcome: null,
    masked: null,
  };
}

/** An approval line from the stored record: the same call, as it was requested. */
function recordAudit(rec: ApprovalRecord, approval: AuditApproval): AuditRecord {
  return callAudit(
    {
      requester: rec.requester,
      session: rec.session,
      callId: rec.callId,
      tool: rec.tool,
      target: rec.target,
      operation: rec.operation,
      input: rec.input,
      rule: rec.rule,
      ruleReason: rec.ruleReason,
      ...(rec.purpose !== undefined ? { purpose: rec.purpose } : {}),
      ...(rec.trace !== undefined ? { trace: rec.trace } : {}),
    },
    approval,
  );
}
