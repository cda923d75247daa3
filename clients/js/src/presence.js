// Presence: the member queries (`presence`, `presenceStats`), and on topics with join/leave
// events the member list kept current by them, in `pseq` order, with a fresh list taken in place
// of events the gateway could not replay.
//
// `presenceMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError, callSafely } from './errors.js';
import { presenceSeen } from './positions.js';
import { checkTopic } from './protocol.js';

/** Presence queries, and the member list the join/leave events keep. */
export const presenceMethods = {
  /** The members present in `topic` (`[{user?, session, info?}]`); rejects `limit_reached` on big topics. */
  async presence(topic) {
    checkTopic(topic);
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const reply = await this._request({ type: 'presence', topic });
    return reply.members;
  },

  /** `{members, users}` of `topic`'s presence: cheap at any size. */
  async presenceStats(topic) {
    checkTopic(topic);
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const reply = await this._request({ type: 'presence_stats', topic });
    return { members: reply.members, users: reply.users };
  },

  /**
   * The members of `topic` as the join/leave events keep them (`[{user?, session, info?}]`), or null
   * until a list is known: call `presence(topic)` once after subscribing, then the events (and
   * any fresh list the gateway sends) keep it current; the `members` event tells each change.
   */
  members(topic) {
    const entry = this._subs.get(topic);
    return entry && entry.members ? [...entry.members.values()] : null;
  },

  /** The presence position of `topic` (`{pseq, epoch}`), or null on a topic without events. */
  presencePosition(topic) {
    const entry = this._subs.get(topic);
    return entry && entry.pseq != null ? { pseq: entry.pseq, epoch: entry.pepoch } : null;
  },

  // A member list at position `{pseq, epoch}`: replaces the tracked members unless the events
  // already went past it (a list answered while later events were on their way).
  _takeList(entry, frame) {
    if (entry.membersAt && presenceSeen({ pseq: entry.membersAt.pseq, pepoch: entry.membersAt.epoch }, frame.pseq, frame.epoch)) {
      return;
    }
    entry.members = new Map(frame.members.map((m) => [m.session, m]));
    entry.membersAt = { pseq: frame.pseq, epoch: frame.epoch };
    if (!presenceSeen(entry, frame.pseq, frame.epoch)) {
      entry.pseq = frame.pseq;
      entry.pepoch = frame.epoch;
    }
    this._emit('members', { topic: entry.topic, members: [...entry.members.values()] });
  },

  // A join or leave: the gateway sends each topic's events in pseq order (replaying what a
  // resume missed); one already reflected (an older list's) is only skipped.
  _onPresenceEvent(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry) return;
    if (presenceSeen(entry, frame.pseq, frame.epoch)) {
      this._emit('duplicate', { topic: frame.topic, pseq: frame.pseq });
      return;
    }
    entry.pseq = frame.pseq;
    entry.pepoch = frame.epoch;
    const event = { topic: frame.topic, pseq: frame.pseq, epoch: frame.epoch, member: frame.member };
    for (const h of entry.handles) {
      const fn = frame.type === 'join' ? h._onJoin : h._onLeave;
      if (fn) callSafely(fn, [event]);
    }
    this._emit(frame.type, event);
    const at = entry.membersAt;
    if (entry.members && !(at && presenceSeen({ pseq: at.pseq, pepoch: at.epoch }, frame.pseq, frame.epoch))) {
      if (frame.type === 'join') entry.members.set(frame.member.session, frame.member);
      else entry.members.delete(frame.member.session);
      entry.membersAt = { pseq: frame.pseq, epoch: frame.epoch };
      this._emit('members', { topic: entry.topic, members: [...entry.members.values()] });
    }
    this._scheduleSave();
  },

  // A list sent in place of join/leave events the gateway could not replay (trimmed log, a
  // lost log's new epoch): it replaces the members, and events follow on from its position.
  _onFreshList(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry) return;
    entry.members = null;
    entry.membersAt = null;
    entry.pseq = null;
    this._takeList(entry, frame);
    this._emit('presence', { topic: frame.topic, members: frame.members, pseq: frame.pseq, epoch: frame.epoch, recovered: false });
    this._scheduleSave();
  },
};
