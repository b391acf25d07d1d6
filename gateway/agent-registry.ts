/**
 * What the gateway knows of its endpoint agents: when each last reported, from where, and how many
 * reports it sent, attributed or had refused. Bounded: agent names come from tokens, a closed set,
 * but a cap keeps a misconfiguration from growing memory without end.
 */

export interface AgentSighting {
  name: string;
  host: string | null;
  firstSeenAt: number;
  lastSeenAt: number;
  lastSourceIp: string;
  reports: number;
  attributed: number;
  refused: number;
}

export class AgentRegistry {
  private readonly agents = new Map<string, AgentSighting>();
  private readonly maxAgents: number;

  constructor(maxAgents = 10_000) {
    this.maxAgents = maxAgents;
  }

  /** Count one batch from `name`. */
  seen(name: string, update: { host: string | null; sourceIp: string; reports: number; attributed: number; refused: number }, now: number): void {
    let a = this.agents.get(name);
    if (!a) {
      if (this.agents.size >= this.maxAgents) {
        // Drop the agent silent for longest; Map iteration order is insertion order, so refresh on use.
        const oldest = this.agents.keys().next().value;
        if (oldest !== undefined) this.agents.delete(oldest);
      }
      a = { name, host: null, firstSeenAt: now, lastSeenAt: now, lastSourceIp: update.sourceIp, reports: 0, attributed: 0, refused: 0 };
    } else this.agents.delete(name);
    this.agents.set(name, a);
    a.host = update.host ?? a.host;
    a.lastSeenAt = now;
    a.lastSourceIp = update.sourceIp;
    a.reports += update.reports;
    a.attributed += update.attributed;
    a.refused += update.refused;
  }

  get(name: string): AgentSighting | undefined {
    return this.agents.get(name);
  }

  all(): AgentSighting[] {
    return [...this.agents.values()];
  }
}
