// bench/idle_start/idle_start.mjs -- where the time of an idle start goes (goal 2): run by
// bench/bench_idle_start.sh, which sets DATABASE_URL, MOONQ_BIN, BENCH_SCHEMA, BENCH_DIR (config and
// handlers) and BENCH_N. Prints one line per measure, times in ms (p50 / p99 over BENCH_N).
//   1. One client's statements back to back and with GAP ms idle between them (SELECT 1; a bare
//      single-row INSERT commit into a one-index table; the same with a NOTIFY; moonq's send).
//   2. `moonq run` idle (workers 1, concurrency 10), one job sent every GAP ms: send call -> the
//      job's started_at (the claim statement's start), the send call's own duration, and from the
//      send call's return to started_at (negative: the claim began before the sender had its answer).
import { spawn } from 'node:child_process'
import pg from 'pg'

const url = process.env.DATABASE_URL
const S = process.env.BENCH_SCHEMA
const N = Number(process.env.BENCH_N || 300)
const GAP = Number(process.env.BENCH_GAP_MS || 10)
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const nowMs = () => performance.timeOrigin + performance.now()
const pct = (a, q) => { const s = Float64Array.from(a).sort(); return s[Math.min(s.length - 1, Math.floor(s.length * q))].toFixed(3) }
const line = (label, a) => console.log(`${label.padEnd(58)} p50 ${pct(a, 0.5)}  p99 ${pct(a, 0.99)}`)

const c = new pg.Client(url)
await c.connect()
await c.query('CREATE TABLE IF NOT EXISTS bench_idle_floor (id bigserial PRIMARY KEY, d jsonb)')
const statements = [
  ['SELECT 1', 'SELECT 1'],
  ['bare INSERT commit (one index)', `INSERT INTO bench_idle_floor (d) VALUES ('{"i": 1}')`],
  ['bare INSERT + NOTIFY commit', `WITH x AS (INSERT INTO bench_idle_floor (d) VALUES ('{"i": 1}')) SELECT pg_notify('bench_idle_nobody', '1')`],
  ['moonq send (no worker)', `SELECT ${S}.send('bench_idle_nobody', '{"i": 1}')`]
]
for (const [label, sql] of statements) {
  for (const gap of [0, GAP]) {
    const l = []
    for (let i = 0; i < N; i++) {
      const t = performance.now()
      await c.query(sql)
      l.push(performance.now() - t)
      if (gap) await sleep(gap)
    }
    line(`${label}, ${gap ? `${gap} ms idle between` : 'back to back'}`, l)
  }
}
await c.query('DROP TABLE bench_idle_floor')

const run = spawn(process.env.MOONQ_BIN, ['-c', `${process.env.BENCH_DIR}/config.lua`, 'run'], { stdio: ['ignore', 'ignore', 'inherit'] })
await sleep(2000)
const sent = []
for (let i = 0; i < N; i++) {
  const t0 = nowMs()
  await c.query(`SELECT ${S}.send('bench_idle', $1::jsonb)`, [JSON.stringify({ i })])
  sent.push({ t0, back: nowMs() })
  await sleep(GAP)
}
let rows = []
for (let tries = 0; tries < 100 && rows.length < N; tries++) {
  await sleep(100)
  rows = (await c.query(`SELECT (data->>'i')::int AS i, extract(epoch FROM started_at) * 1e3 AS s
    FROM ${S}.job_archive WHERE queue = 'bench_idle'`)).rows
}
run.kill('SIGTERM')
const start = []; const call = []; const after = []
for (const r of rows) {
  const x = sent[r.i]
  start.push(Number(r.s) - x.t0); call.push(x.back - x.t0); after.push(Number(r.s) - x.back)
}
console.log(`moonq run idle, one job every ${GAP} ms, ${rows.length} of ${N} started:`)
line('  send call -> started_at', start)
line('  send call (its own duration)', call)
line('  send call returned -> started_at', after)
await c.end()
