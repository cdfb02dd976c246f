// Per-client metrics of a federated run: for each phase (train / evaluate), each round's
// entries by client. Rounds and client ids are kept sorted as they arrive, so the per-client
// view reads a window of rounds without going over the whole run.

import { searchSorted } from "./downsample.js";
import { isScalar, naturalCompare } from "./values.js";

class PhaseRounds {
  rounds = []; // ascending
  byRound = new Map(); // round -> Map(client id -> entry)
  clientIds = []; // natural order
  #known = new Set();

  add(round, clients) {
    if (!this.byRound.has(round)) {
      this.rounds.splice(searchSorted(this.rounds, round), 0, round);
      this.byRound.set(round, new Map());
    }
    const entries = this.byRound.get(round);
    for (const client of clients) {
      const id = String(client.client_id);
      if (!this.#known.has(id)) {
        this.#known.add(id);
        const at = this.clientIds.findIndex((other) => naturalCompare(id, other) < 0);
        this.clientIds.splice(at < 0 ? this.clientIds.length : at, 0, id);
      }
      entries.set(id, {
        numExamples: client.num_examples,
        metrics: client.metrics ?? {},
        error: client.error ?? null, // a client whose reply failed
        device: client.device ?? null,
      });
    }
  }
}

export class ClientRounds {
  #phases = new Map(); // phase -> PhaseRounds
  counts = new Map(); // phase -> Map(round -> clients that took part)
  metricNames = new Map(); // phase -> Set of scalar metric names seen
  hasDevices = false;

  /** Record one client_metrics message's clients; returns their non-scalar metric values. */
  add(round, phase, clients) {
    if (!this.#phases.has(phase)) this.#phases.set(phase, new PhaseRounds());
    this.#phases.get(phase).add(round, clients);
    if (!this.metricNames.has(phase)) this.metricNames.set(phase, new Set());
    const names = this.metricNames.get(phase);
    const others = [];
    for (const client of clients) {
      if (client.device) this.hasDevices = true;
      for (const [name, value] of Object.entries(client.metrics ?? {})) {
        if (isScalar(value)) names.add(name);
        else others.push({ client: String(client.client_id), name, value });
      }
    }
    return others;
  }

  /** Set how many clients took part in a round's phase; returns whether that changed. */
  setCount(round, phase, count) {
    if (!this.counts.has(phase)) this.counts.set(phase, new Map());
    const counts = this.counts.get(phase);
    if (counts.get(round) === count) return false;
    counts.set(round, count);
    return true;
  }

  get isEmpty() {
    return this.#phases.size === 0 && this.counts.size === 0;
  }

  /** The phases with client entries, sorted. */
  phases() {
    return [...this.#phases.keys()].sort();
  }

  /** Client ids of a phase, in natural order. */
  clientIds(phase) {
    return this.#phases.get(phase)?.clientIds ?? [];
  }

  /** Rounds of a phase with client entries, ascending. */
  rounds(phase) {
    return this.#phases.get(phase)?.rounds ?? [];
  }

  /** One client's entry in one round: {numExamples, metrics, error, device}, or undefined. */
  entry(phase, clientId, round) {
    return this.#phases.get(phase)?.byRound.get(round)?.get(clientId);
  }
}
