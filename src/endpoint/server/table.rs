//! The connection table: the one writer of the address maps (`by_addr`, `by_ip`) and the
//! deadline structure, connection removal, address migration and the transmit queue.

use super::*;

impl Server {
    /// Updates the use of `ip` and forgets it when nothing is left.
    pub(super) fn release_ip(&mut self, ip: std::net::IpAddr, f: impl FnOnce(&mut IpUse)) {
        let key = ip_key(ip);
        let mut by_ip = self.shared.by_ip();
        if let Some(u) = by_ip.get_mut(&key) {
            f(u);
            if u.connections == 0 && u.pending == 0 {
                by_ip.remove(&key);
            }
        }
    }

    /// What `key` (see [`ip_key`]) holds, across every shard.
    pub(super) fn ip_use(&self, key: u128) -> IpUse {
        self.shared.by_ip().get(&key).copied().unwrap_or_default()
    }

    /// Removes connection `id` from the table and the address maps; returns it.
    pub(super) fn remove_connection(&mut self, id: ClientId) -> Option<Box<Connection>> {
        let conn = self.connections.remove(&id)?;
        self.charged -= conn.budget_used();
        if let Some(r) = self.resumable.get_mut(&id) {
            r.final_stats = Some(conn.stats());
        }
        self.timers.schedule(id, None);
        for a in std::iter::once(conn.addr()).chain(conn.candidate_addr()) {
            if self.by_addr.get(&a) == Some(&id) {
                self.by_addr.remove(&a);
            }
        }
        self.release_ip(conn.addr().ip(), |u| {
            u.connections = u.connections.saturating_sub(1)
        });
        Some(conn)
    }

    /// A sealed datagram from an unknown address: if it is a new packet of a connection
    /// (it opens under that connection's key), the connection challenges the new address and
    /// moves there only when the challenge is answered from it. Only connections whose
    /// replay window would take the packet are tried, those on the same IP first, at most
    /// [`MAX_MIGRATION_TRIALS`].
    pub(super) fn try_migration(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> bool {
        let Ok(packet) = Packet::parse(datagram) else {
            return false;
        };
        if packet.header.fragment.is_some() {
            return false;
        }
        // The search is budgeted per second (one unit per search and per trial decryption),
        // so a flood of sealed-looking datagrams from unknown addresses costs a bounded amount
        // of work; a real client that moved resends.
        let second = self.clock_secs(now);
        if self.trials.0 != second {
            self.trials = (second, 0);
        }
        // A search visits every connection: it costs one unit per 64 of them, a trial
        // decryption one unit.
        // A search of an empty table costs its unit too: with shards, a datagram searched
        // here in vain is relayed to every other shard, so each search must be budgeted.
        let search = 1 + (self.connections.len() / 64) as u32;
        let budget = MAX_TRIALS_PER_SEC.saturating_sub(self.trials.1) as usize;
        if budget <= search as usize {
            self.stats.migration_trials_limited += 1;
            return false;
        }
        self.trials.1 += search;
        if self.connections.is_empty() {
            return false;
        }
        let budget = budget - search as usize + 1;
        let pn = seal::packet_number(&packet.header);
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(
            self.connections
                .values()
                .filter(|c| c.would_accept(pn))
                .map(|c| (c.addr().ip() != from.ip(), c.id())),
        );
        candidates.sort_unstable();
        let connections = &self.connections;
        let scratch = &mut self.scratch;
        let mut tried = 0u32;
        let owner = candidates
            .iter()
            .take(MAX_MIGRATION_TRIALS.min(budget - 1))
            .find(|(_, id)| {
                tried += 1;
                connections[id].opens(&packet, scratch)
            })
            .copied();
        self.candidates = candidates;
        self.trials.1 += tried;
        if let Some((_, id)) = owner {
            let conn = self.connections.get_mut(&id).expect("collected above");
            if let Some(old) = conn.candidate_addr() {
                if self.by_addr.get(&old) == Some(&id) {
                    self.by_addr.remove(&old);
                }
            }
            let before = conn.addr();
            charge(&mut self.charged, conn, |c| {
                c.start_path_challenge(from);
                c.handle_datagram(now, from, datagram, &mut self.scratch, &mut self.events)
            });
            self.by_addr.insert(from, id);
            if conn.addr() != before {
                self.on_migrated(id, before);
            }
            self.mark_dirty(id);
            return true;
        }
        false
    }

    /// Updates the address table after `id` moved away from `old`.
    pub(super) fn on_migrated(&mut self, id: ClientId, old: SocketAddr) {
        if self.by_addr.get(&old) == Some(&id) {
            self.by_addr.remove(&old);
        }
        if let Some(new) = self.connections.get(&id).map(|c| c.addr()) {
            self.by_addr.insert(new, id);
            self.release_ip(old.ip(), |u| {
                u.connections = u.connections.saturating_sub(1)
            });
            self.shared
                .by_ip()
                .entry(ip_key(new.ip()))
                .or_default()
                .connections += 1;
        }
        self.stats.migrations += 1;
    }

    /// Lets `id` be resumed until `until`, then forgets it.
    pub(super) fn expire_resumable(&mut self, id: ClientId, until: Instant) {
        if let Some(r) = self.resumable.get_mut(&id) {
            r.until = Some(until);
            self.resumable_expiry.push_back((until, id));
        }
    }

    /// Re-reads connection `id`'s next deadline after it ran.
    pub(super) fn reschedule(&mut self, id: ClientId) {
        let t = self.connections.get(&id).and_then(|c| c.poll_timeout());
        self.timers.schedule(id, t);
    }

    /// Removes `id` if its connection closed, reporting why.
    pub(super) fn reap(&mut self, id: ClientId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if !conn.is_closed() {
            return;
        }
        if let Some(reason) = conn.take_report() {
            self.events.push_back(Event::Disconnected {
                client: id,
                reason,
                stats: Box::new(conn.stats()),
            });
        }
        self.remove_connection(id);
        self.expire_resumable(id, self.last_now + self.config.resume_window);
    }

    /// Queues `id` for `poll_transmit` unless it waits there already (the queue holds each
    /// connection at most once).
    pub(super) fn mark_dirty(&mut self, id: ClientId) {
        if self.queued.insert(id) {
            self.dirty.push_back(id);
        }
    }
}

impl Drop for Server {
    /// A shard's server that goes away (its thread ended, or unwound from a panic) gives back
    /// what it holds in the tables every shard shares: its connections' and half-open
    /// handshakes' per-IP counts, and its ids in the resumption map. Otherwise the other
    /// shards would refuse those IPs for good and relay those resumptions to a shard that no
    /// longer answers.
    fn drop(&mut self) {
        if self.unclaimed.is_none() {
            return;
        }
        {
            let mut by_ip = self.shared.by_ip();
            let conns = self.connections.values().map(|c| (c.addr(), true));
            let pending = self.pending.keys().map(|&a| (a, false));
            for (addr, connection) in conns.chain(pending) {
                let key = ip_key(addr.ip());
                if let Some(u) = by_ip.get_mut(&key) {
                    if connection {
                        u.connections = u.connections.saturating_sub(1);
                    } else {
                        u.pending = u.pending.saturating_sub(1);
                    }
                    if u.connections == 0 && u.pending == 0 {
                        by_ip.remove(&key);
                    }
                }
            }
        }
        let shard = self.shard;
        self.shared.tickets().retain(|_, s| *s != shard);
    }
}
