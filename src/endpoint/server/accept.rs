//! The server side of the handshake: admission (bans, allow-list, per-IP limits, the memory
//! budget), stateless retries, key exchange, connect tokens and resumption tickets, the
//! half-open table and the answers written at poll time.

use super::*;

impl Server {
    pub(super) fn on_client_auth(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        client_key: &[u8],
        hello: &[u8],
        datagram: &[u8],
    ) {
        let hello = match handshake::parse_hello(hello) {
            Some(h) if len >= MIN_CLIENT_AUTH => h,
            _ => {
                self.stats.datagrams_dropped += 1;
                tracing::debug!(%from, len, "client AUTH too short or malformed hello");
                return;
            }
        };
        // The cheap half of the key rule (33 octets, first 02 or 03) here; whether it is a
        // point costs a square root and waits until the AUTH passed admission and load.
        let client_key = match <[u8; PUBLIC_KEY_LEN]>::try_from(client_key) {
            Ok(k) if crypto::COMPRESSED_PREFIXES.contains(&k[0]) => k,
            _ => {
                self.refuse_client_key(from);
                return;
            }
        };
        if self.redirect_resumption(from, hello.ticket, datagram) {
            return;
        }
        if self.draining {
            self.stats.refused_draining += 1;
            self.refuse(from, ErrorCode::NoSpace, "server draining");
            return;
        }
        if self.bans.is_banned(now, from.ip()) {
            self.stats.refused_banned += 1;
            self.refuse(from, ErrorCode::CertificateInvalid, "banned");
            return;
        }
        if let Some(allowed) = &self.config.allow_list {
            if !allowed.iter().any(|p| p.contains(from.ip())) {
                self.stats.refused_not_allowed += 1;
                self.refuse(
                    from,
                    ErrorCode::CertificateInvalid,
                    "address not authorized",
                );
                return;
            }
        }
        if hello.channels.is_some_and(|d| *d != self.channels_digest) {
            self.stats.refused_channels += 1;
            self.refuse(
                from,
                ErrorCode::CertificateInvalid,
                "channels differ from the server's",
            );
            return;
        }
        if let Some(p) = self.pending.get_mut(&from) {
            if p.client_key == client_key {
                // A resent AUTH: our reply was lost. Send the same reply again.
                p.resent = true;
                self.reply(from, Reply::PendingAuth);
                return;
            }
            if now.saturating_duration_since(p.created) < REKEY_AFTER {
                // A new key from an address whose handshake just began: one address may not
                // keep the server doing key exchanges.
                self.stats.rekeys_dropped += 1;
                return;
            }
        }
        // First this server's own half-open handshakes from the IP, without a lock.
        let ip = ip_key(from.ip());
        let has_pending = self.pending.contains_key(&from);
        if !has_pending && self.at_ip_limit(now, ip, false) {
            self.stats.handshakes_dropped_ip += 1;
            return;
        }
        // Handshake demand: AUTHs that got this far, per second.
        let second = self.clock_secs(now);
        let (at, this, before) = self.auth_rate;
        self.auth_rate = match second.saturating_sub(at) {
            0 => (at, this.saturating_add(1), before),
            1 => (second, 1, this),
            _ => (second, 1, 0),
        };
        if self.needs_retry() {
            let issued = second as u32;
            let valid = hello.cookie.is_some_and(|c| {
                let t = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                let fresh = t <= issued && issued - t <= COOKIE_LIFETIME_SECS;
                let expected = handshake::retry_cookie(&self.retry_secret, t, from, &client_key);
                fresh && crypto::macs_equal(c, &expected)
            });
            if !valid {
                if hello.cookie.is_some() {
                    self.stats.bad_cookies += 1;
                }
                // A stateless retry: no key exchange, no state, fewer octets than the AUTH.
                let cookie = handshake::retry_cookie(&self.retry_secret, issued, from, &client_key);
                if self.reply(from, Reply::Retry(cookie)) {
                    self.stats.retries_sent += 1;
                }
                return;
            }
        }
        // The shared per-IP count sits behind a lock the shards share: an AUTH meets it only
        // once it proved its address (a valid cookie, when retries are asked for), so a
        // spoofed AUTH flood costs each shard a MAC and no contention.
        if !has_pending && self.at_ip_limit(now, ip, true) {
            self.stats.handshakes_dropped_ip += 1;
            return;
        }
        let mut client_id = None;
        if let Some(ticket) = hello.ticket {
            client_id = self.check_ticket(now, ticket, &client_key);
        }
        match self.check_token(now, from, hello.token) {
            Ok(Some(id)) => client_id = Some(id),
            Ok(None) => {}
            Err(why) => {
                self.stats.refused_token += 1;
                self.refuse(from, ErrorCode::CertificateInvalid, why);
                return;
            }
        }
        if !self.replaces(client_id, from) && self.refuse_past_connection_limits(from) {
            return;
        }
        if self.memory_charged() + PENDING_COST > self.config.memory_budget {
            self.stats.refused_memory += 1;
            self.refuse(from, ErrorCode::NoSpace, "server memory budget reached");
            return;
        }
        if self.pending.len() >= self.config.max_pending && !has_pending {
            self.expire_pending(now);
            if self.pending.len() >= self.config.max_pending {
                self.stats.handshakes_dropped += 1;
                return;
            }
        }
        let ephemeral = EphemeralKey::generate();
        let Ok(shared) = ephemeral.shared_secret(&client_key) else {
            self.refuse_client_key(from);
            return;
        };
        self.stats.key_exchanges += 1;
        let cert = self
            .config
            .identity
            .certificate(&client_key, ephemeral.public_bytes());
        let reply = handshake::auth_datagram(ephemeral.public_bytes(), &cert);
        debug_assert!(reply.len() <= MIN_CLIENT_AUTH);
        let transcript = crypto::transcript_hash(datagram, &reply);
        let keys = crypto::derive_session_keys(&shared, &transcript);
        self.reply(from, Reply::PendingAuth);
        self.insert_pending(
            from,
            Pending {
                client_key,
                reply,
                keys,
                deadline: now + self.config.handshake_timeout,
                client_id,
                replied_at: now,
                resent: false,
                created: now,
            },
        );
    }

    /// With shards: an AUTH resuming an id that another shard issued (the client's new
    /// address hashed here) goes to that shard, which holds the ticket's secret and maybe the
    /// old connection. Returns whether it was kept for it.
    fn redirect_resumption(
        &mut self,
        from: SocketAddr,
        ticket: Option<&[u8; handshake::TICKET_LEN]>,
        datagram: &[u8],
    ) -> bool {
        let (Some(out), Some(ticket)) = (self.unclaimed.as_mut(), ticket) else {
            return false;
        };
        let id = ClientId(u64::from_be_bytes(
            ticket[..8].try_into().expect("8 octets"),
        ));
        if self.resumable.contains_key(&id) || out.len() >= MAX_UNCLAIMED {
            return false;
        }
        match self.shared.tickets().get(&id) {
            Some(&shard) if shard != self.shard => {
                out.push((Some(shard), from, datagram.to_vec()));
                true
            }
            _ => false,
        }
    }

    /// Whether a client at `from` resuming `client_id` (if any) replaces a connection it has:
    /// the connection of that id, or the one on its address (a restart).
    fn replaces(&self, client_id: Option<ClientId>, from: SocketAddr) -> bool {
        client_id.is_some_and(|id| self.connections.contains_key(&id))
            || self.by_addr.contains_key(&from)
    }

    /// Refuses a new connection from `from` with ERROR 1.1, and counts it, if `max_clients`
    /// or its IP's `max_clients_per_ip` is reached; returns whether it did.
    fn refuse_past_connection_limits(&mut self, from: SocketAddr) -> bool {
        let ip_conns = self.ip_use(ip_key(from.ip())).connections as usize;
        if self.connections.len() >= self.config.max_clients {
            self.stats.refused_full += 1;
            self.refuse(from, ErrorCode::NoSpace, "server full");
        } else if ip_conns >= self.config.max_clients_per_ip {
            self.stats.refused_ip_limit += 1;
            self.refuse(
                from,
                ErrorCode::NoSpace,
                "too many connections from this address",
            );
        } else {
            return false;
        }
        true
    }

    /// Whether the IP holds `max_pending_per_ip` half-open handshakes, after forgetting the
    /// expired ones: counting this server's own (no lock) or all the shards' (`shared`).
    fn at_ip_limit(&mut self, now: Instant, ip: u128, shared: bool) -> bool {
        let count = |s: &Self| {
            if shared {
                s.ip_use(ip).pending as usize
            } else {
                s.pending_by_ip.get(&ip).copied().unwrap_or(0) as usize
            }
        };
        if count(self) < self.config.max_pending_per_ip {
            return false;
        }
        self.expire_pending(now);
        count(self) >= self.config.max_pending_per_ip
    }

    /// Seconds of the server's clock (from its first datagram), for cookies and rates.
    pub(super) fn clock_secs(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs()
    }

    /// Whether an AUTH must bring a retry cookie before the server does a key exchange.
    pub(super) fn needs_retry(&self) -> bool {
        match self.config.retry {
            RetryPolicy::Never => false,
            RetryPolicy::Always => true,
            RetryPolicy::UnderLoad { auths_per_sec } => {
                let (_, this, before) = self.auth_rate;
                2 * self.pending.len() >= self.config.max_pending
                    || this.max(before) > auths_per_sec
            }
        }
    }

    /// Octets charged to the server's memory budget: every connection's budget use and
    /// fixed state, and the half-open handshakes. (Counted when a handshake would begin, not
    /// per datagram.)
    pub fn memory_charged(&self) -> usize {
        debug_assert_eq!(
            self.charged,
            self.connections
                .values()
                .map(|c| c.budget_used())
                .sum::<usize>()
        );
        self.charged
            + self.connections.len() * std::mem::size_of::<Connection>()
            + self.pending.len() * PENDING_COST
    }

    pub(super) fn insert_pending(&mut self, from: SocketAddr, p: Pending) {
        self.pending_expiry.push_back((p.deadline, from));
        if self.pending.insert(from, p).is_none() {
            *self.pending_by_ip.entry(ip_key(from.ip())).or_default() += 1;
            self.shared
                .by_ip()
                .entry(ip_key(from.ip()))
                .or_default()
                .pending += 1;
        }
    }

    pub(super) fn remove_pending(&mut self, from: &SocketAddr) -> Option<Pending> {
        let p = self.pending.remove(from)?;
        let ip = ip_key(from.ip());
        if let Some(n) = self.pending_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.pending_by_ip.remove(&ip);
            }
        }
        self.release_ip(from.ip(), |u| u.pending = u.pending.saturating_sub(1));
        Some(p)
    }

    pub(super) fn on_client_finished(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &crate::wire::Header,
        fields: TypeFields,
        sealed: &mut [u8],
    ) {
        let Some(p) = self.pending.get(&from) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let mut decoder = crate::pipeline::Decoder::with_limit(0);
        let Ok(opened) = decoder.open(header, &fields, sealed, Some(&p.keys.client_to_server))
        else {
            self.stats.datagrams_dropped += 1;
            tracing::debug!(%from, "finished failed to open");
            return;
        };
        if !crypto::macs_equal(opened.plaintext, &p.keys.client_finished) {
            self.stats.bad_finished += 1;
            self.remove_pending(&from);
            self.reply(
                from,
                Reply::Error(ErrorCode::FinishInvalid, "finished invalid"),
            );
            return;
        }
        let p = self.remove_pending(&from).expect("looked up above");
        // Handshakes run concurrently: the limits are checked again now that it finished.
        if !self.replaces(p.client_id, from) && self.refuse_past_connection_limits(from) {
            return;
        }
        if let Some(old) = self.by_addr.get(&from).copied() {
            // The client restarted on the same address: the old connection is gone.
            if p.client_id != Some(old) {
                if let Some(conn) = self.remove_connection(old) {
                    self.events.push_back(Event::Disconnected {
                        client: old,
                        reason: crate::types::DisconnectReason::Replaced,
                        stats: Box::new(conn.stats()),
                    });
                    self.expire_resumable(old, now + self.config.resume_window);
                }
                self.by_addr.remove(&from);
            }
        }
        let mut inherited = 0;
        let id = match p.client_id {
            Some(id) => {
                if let Some(old) = self.remove_connection(id) {
                    inherited = old.undelivered_charge();
                    self.events.push_back(Event::Disconnected {
                        client: id,
                        reason: crate::types::DisconnectReason::Replaced,
                        stats: Box::new(old.stats()),
                    });
                }
                self.stats.resumed += u64::from(self.resumable.contains_key(&id));
                id
            }
            None => {
                // With tokens, the backend owns ids below 2^63; the server picks above.
                let base = if self.config.tokens.is_some() {
                    SERVER_ID_BIT
                } else {
                    0
                };
                // One counter for every shard: ids are unique across them.
                loop {
                    let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let id = ClientId(base | n);
                    if !self.connections.contains_key(&id) && !self.resumable.contains_key(&id) {
                        break id;
                    }
                }
            }
        };
        if self.unclaimed.is_some() {
            self.shared.tickets().insert(id, self.shard);
        }
        self.resumable.insert(
            id,
            Resumable {
                secret: p.keys.resumption_secret,
                until: None,
                final_stats: None,
            },
        );
        let mut data = [0u8; SERVER_FINISHED_DATA];
        data[..FINISHED_LEN].copy_from_slice(&p.keys.server_finished);
        data[FINISHED_LEN..].copy_from_slice(&id.0.to_be_bytes());
        let finished = handshake::finished_datagram(&p.keys.server_to_client, &data);
        self.reply(from, Reply::Finished(finished.clone()));
        let mut conn = Connection::new(
            now,
            id,
            from,
            Role::Server,
            Arc::clone(&self.conn_config),
            p.keys.server_to_client,
            p.keys.client_to_server,
            Some(finished),
            (!p.resent).then(|| now.saturating_duration_since(p.replied_at)),
        );
        // The replaced connection's messages still in the event queue are released from
        // this one (poll_event finds connections by client id).
        conn.inherit_undelivered(inherited);
        self.timers.schedule(id, conn.poll_timeout());
        self.charged += conn.budget_used();
        self.connections.insert(id, Box::new(conn));
        self.by_addr.insert(from, id);
        self.shared
            .by_ip()
            .entry(ip_key(from.ip()))
            .or_default()
            .connections += 1;
        self.stats.connections_accepted += 1;
        self.events.push_back(Event::Connected { client: id });
    }

    /// Whether a datagram looks like a handshake finished: a sealed ACK with packet number 0.
    pub(super) fn is_finished(datagram: &[u8]) -> bool {
        Packet::parse(datagram).is_ok_and(|p| {
            p.header.packet_type == PacketType::Ack
                && p.header.flags == Flags::ENCRYPTED
                && seal::packet_number(&p.header) == 0
        })
    }

    /// Refuses an AUTH whose key is not a compressed SEC1 point on P-256 (ERROR 1.2), and
    /// counts it.
    fn refuse_client_key(&mut self, from: SocketAddr) {
        self.stats.refused_client_key += 1;
        self.refuse(from, ErrorCode::CertificateInvalid, "client key invalid");
    }

    /// Answers an AUTH with an unsealed ERROR, keeping no state.
    pub(super) fn refuse(&mut self, to: SocketAddr, code: ErrorCode, why: &'static str) {
        match self.refusal_log.allow(self.last_now) {
            Some(left_out) => tracing::info!(%to, code = %code, why, left_out, "handshake refused"),
            None => tracing::debug!(%to, code = %code, why, "handshake refused"),
        }
        self.reply(to, Reply::Error(code, why));
    }

    /// Queues a handshake datagram for `to`; returns false (and counts the drop) if the queue
    /// is full.
    pub(super) fn reply(&mut self, to: SocketAddr, reply: Reply) -> bool {
        if self.handshake_out.len() >= MAX_REPLY_QUEUE {
            self.stats.handshakes_dropped += 1;
            return false;
        }
        self.handshake_out.push_back((to, reply));
        true
    }

    /// The client id a resumption ticket proves, if it is valid.
    pub(super) fn check_ticket(
        &self,
        now: Instant,
        ticket: &[u8; handshake::TICKET_LEN],
        client_key: &[u8],
    ) -> Option<ClientId> {
        let id = ClientId(u64::from_be_bytes(
            ticket[..8].try_into().expect("8 octets"),
        ));
        let r = self.resumable.get(&id)?;
        if r.until.is_some_and(|u| now >= u) {
            return None;
        }
        let expected = crypto::resume_mac(&r.secret, client_key);
        crypto::macs_equal(&ticket[8..], &expected).then_some(id)
    }

    /// Checks a connect token: `Ok(Some(id))` for a valid one, `Ok(None)` for none where
    /// none is required, `Err(why)` to refuse.
    pub(super) fn check_token(
        &mut self,
        now: Instant,
        from: SocketAddr,
        token: &[u8],
    ) -> Result<Option<ClientId>, &'static str> {
        let Some(policy) = self.config.tokens else {
            return Ok(None);
        };
        if token.is_empty() {
            return if policy.required {
                Err("connect token required")
            } else {
                Ok(None)
            };
        }
        let t = ConnectToken::verify(token, &policy.authority).map_err(|_| "token invalid")?;
        if t.client_id & SERVER_ID_BIT != 0 {
            return Err("token client id out of range");
        }
        let unix = self
            .unix_time(now)
            .ok_or("server has no wall clock for tokens")?;
        if t.expires <= unix {
            return Err("token expired");
        }
        if !self.config.public_addrs.iter().any(|a| t.names(*a)) {
            return Err("token not for this server");
        }
        let digest: [u8; 32] = {
            use sha2::{Digest, Sha256};
            Sha256::digest(token).into()
        };
        let mut uses = self.shared.token_uses();
        if let Some(&(first, _)) = uses.get(&digest) {
            if first != from {
                return Err("token already used from another address");
            }
        } else {
            if uses.len() >= MAX_TOKEN_USES {
                uses.retain(|_, (_, exp)| *exp > unix);
            }
            if uses.len() >= MAX_TOKEN_USES {
                return Err("too many tokens in use");
            }
            uses.insert(digest, (from, t.expires));
        }
        Ok(Some(ClientId(t.client_id)))
    }

    /// Forgets the half-open handshakes whose deadline has come (only those: the queue is in
    /// deadline order).
    pub(super) fn expire_pending(&mut self, now: Instant) {
        while let Some((deadline, addr)) = take_due(&mut self.pending_expiry, now) {
            if self
                .pending
                .get(&addr)
                .is_some_and(|p| p.deadline == deadline)
            {
                self.remove_pending(&addr);
                self.stats.handshakes_expired += 1;
            }
        }
    }
}
