//! The core's cost per message with no sockets (sans-IO): send → encode → seal → open → ack →
//! deliver, for one connection; and the server's own CPU time per message with 1, 100, 1,000
//! and 10,000 connected clients, each sending one message per tick at 30 Hz that the server
//! echoes (only the server's calls are timed).
//!
//! `cargo bench --bench core`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickwire::ChannelId;

#[path = "../examples/common/world.rs"]
mod world;
use world::World;

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    for (name, channel, size, batch) in [
        ("unreliable_64B", 0u8, 64usize, 16u64),
        ("unreliable_900B", 0, 900, 16),
        ("reliable_ordered_100B", 3, 100, 16),
    ] {
        let mut w = World::new(1);
        let msg = vec![5u8; size];
        g.throughput(Throughput::Elements(batch));
        g.bench_function(name, |b| {
            b.iter(|| {
                let now = w.now;
                for _ in 0..batch {
                    w.clients[0].1.send(now, ChannelId(channel), &msg).unwrap();
                }
                w.tick::<true>(Duration::from_millis(1));
            })
        });
    }
    g.finish();
}

fn endpoint_scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint");
    g.sample_size(10);
    let sizes: Vec<usize> = match std::env::var("TICKWIRE_BENCH_CLIENTS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![1, 100, 1000, 10_000],
    };
    for n in sizes {
        let mut w = World::new(n);
        w.echo = true;
        let msg = [9u8; 100];
        // Warm up: queues, pools and RTT estimates settle.
        for _ in 0..30 {
            w.round::<false>(&msg);
        }
        g.throughput(Throughput::Elements(n as u64));
        // Server CPU per message: only the server's calls are timed (the clients' work grows
        // with their number and is not the server's).
        g.bench_with_input(
            BenchmarkId::new("server_time_one_echoed_message_per_client_at_30Hz", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let before = w.server_time;
                    for _ in 0..iters {
                        w.round::<true>(&msg);
                    }
                    w.server_time - before
                })
            },
        );
        let stats = w.server.stats();
        eprintln!(
            "{n} clients: {} connected, {} timers run, largest connection {} B",
            w.server.client_count(),
            stats.timers_run,
            w.server
                .clients()
                .iter()
                .map(|c| c.stats.memory_bytes)
                .max()
                .unwrap_or(0)
        );
    }
    g.finish();
}

criterion_group!(benches, per_message, endpoint_scaling);
criterion_main!(benches);
