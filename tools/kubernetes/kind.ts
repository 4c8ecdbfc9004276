import { z } from 'zod';
import { SecretRef } from '../../server/kernel/secrets.js';
import type { TargetKind } from '../kind.js';
import { notServed } from '../ssh/kind.js';

export const KubernetesTarget = z.strictObject({
  kind: z.literal('kubernetes'),
  description: z.string().optional(),
  kubeconfig: SecretRef,
  context: z.string().min(1).optional(),
});
export type KubernetesTargetConfig = z.output<typeof KubernetesTarget> & { name: string };

/**
 * Kubernetes targets. The config is accepted now; `kubectl` arrives in a later release and
 * plugs its tool in here.
 */
export const kubernetesKind: TargetKind<KubernetesTargetConfig> = {
  kind: 'kubernetes',
  configSchema: KubernetesTarget,
  laterTools: ['kubectl'],
  summary: (t) => `kubernetes${t.context ? ` context ${t.context}` : ''}`,
  secretRefs: (t) => [{ key: 'kubeconfig', ref: t.kubeconfig }],
  open: () => notServed('kubernetes'),
};
