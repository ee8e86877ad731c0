#!/usr/bin/env node
// Throughput benchmark for graphile-worker, to compare with runbook's queue on
// the same PostgreSQL.
//
// usage: node bench.mjs --url postgres://postgres@127.0.0.1:5432/DB --jobs 20000 [--concurrency 10]
//
// Phases (only phase 3 is timed):
//   1. install/migrate graphile-worker's schema (runMigrations),
//   2. VACUUM the jobs table (dead rows from earlier runs), enqueue N `noop`
//      jobs with a single `graphile_worker.add_jobs(...)` call, ANALYZE,
//   3. start a worker (run()) with a no-op handler and batching enabled, and
//      poll `graphile_worker._private_jobs` every 5 ms until it is empty
//      (graphile-worker deletes a job when it completes), then stop the worker;
//      the rate is the jobs left at the first look that found one completed,
//      over the time from that look to the one that found none.
//
// stdout receives exactly one JSON line; every log line goes to stderr.

import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";

const require = createRequire(import.meta.url);
const GW_VERSION = require("graphile-worker/package.json").version;

const SCHEMA = "graphile_worker"; // graphile-worker's default schema
const TASK = "noop";
const POLL_EVERY_MS = 5;

function usage(msg) {
  if (msg) process.stderr.write(`bench.mjs: ${msg}\n`);
  process.stderr.write(
    "usage: node bench.mjs --url postgres://postgres@127.0.0.1:5432/DB --jobs 20000 [--concurrency 10] [--timeout 600] [--verbose]\n",
  );
  process.exit(2);
}

function positiveInt(name, raw) {
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) usage(`--${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

let args;
try {
  args = parseArgs({
    options: {
      url: { type: "string" },
      jobs: { type: "string" },
      concurrency: { type: "string", default: "10" },
      // Safety net: give up if the queue is not drained after this many seconds.
      timeout: { type: "string", default: "600" },
      // Also print graphile-worker's info-level lines (one per completed job!) to stderr.
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (e) {
  usage(e.message);
}
if (args.help) usage();
if (!args.url) usage("--url is required");
if (!args.jobs) usage("--jobs is required");
const connectionString = args.url;
const jobs = positiveInt("jobs", args.jobs);
const concurrency = positiveInt("concurrency", args.concurrency);
const timeoutMs = positiveInt("timeout", args.timeout) * 1000;
const verbose = args.verbose;

// All graphile-worker logging goes to stderr (its default logger writes
// info-level lines to stdout via console.log). Only warnings and errors are
// shown unless --verbose: at info level graphile-worker logs one line per
// completed job, which would put 20000 synchronous stderr writes inside the
// timed section. Debug lines are always dropped.
const logger = new Logger((scope) => (level, message) => {
  if (level === "debug" || (level === "info" && !verbose)) return;
  const label = scope && scope.label ? `${scope.label}` : "core";
  process.stderr.write(`[graphile-worker ${label}] ${level.toUpperCase()}: ${message}\n`);
});

// Options shared by every graphile-worker entry point used here.
const baseOptions = { connectionString, schema: SCHEMA, logger };

// Worker options. Batching is enabled through the preset; names checked
// against graphile-worker 0.17.3's dist/index.d.ts (GraphileConfig.WorkerOptions)
// and dist/main.js (_runTaskList):
//   worker.localQueue.size       > 1 enables the pool-level local queue (default -1 = off)
//   worker.completeJobBatchDelay >= 0 enables batched completion (default -1 = off)
//   worker.failJobBatchDelay     >= 0 enables batched failure (default -1 = off)
//   worker.concurrentJobs        jobs run concurrently (legacy top-level name: `concurrency`,
//                                which would override the preset, so it is not passed)
//   worker.pollInterval          default 2000 ms; set small
//   useNodeTime                  left at its default (false: PostgreSQL's clock)
const workerOptions = {
  ...baseOptions,
  taskList: {
    [TASK]: async () => {},
  },
  parsedCronItems: [], // no cron items; do not look for a ./crontab file
  preset: {
    worker: {
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
      concurrentJobs: concurrency,
      pollInterval: 50,
    },
  },
};

async function countJobs(utils) {
  const { rows } = await utils.withPgClient((client) =>
    client.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`),
  );
  return rows[0].n;
}

async function main() {
  // 1. Schema, before timing.
  await runMigrations(baseOptions);

  const utils = await makeWorkerUtils(baseOptions);
  let runner = null;
  try {
    const leftover = await countJobs(utils);
    if (leftover !== 0) {
      throw new Error(
        `${SCHEMA}._private_jobs already holds ${leftover} job(s); use an empty database (or clear the table) first`,
      );
    }

    // Remove dead tuples left by earlier runs (completed jobs are deleted, and
    // autovacuum may not have caught up), so that each run starts from a
    // compact table. Not timed.
    await utils.withPgClient((client) => client.query(`vacuum ${SCHEMA}._private_jobs`));

    // 2. Enqueue N jobs in one statement, before timing. add_jobs fills
    // run_at (now()), max_attempts (25), priority (0) and payload ('{}') itself.
    const { rows } = await utils.withPgClient((client) =>
      client.query(
        `select count(*)::int as n
           from ${SCHEMA}.add_jobs(array(
             select row($1::text, '{}'::json, null, null, null, null, null, null)::${SCHEMA}.job_spec
               from generate_series(1, $2::int)
           ))`,
        [TASK, jobs],
      ),
    );
    if (rows[0].n !== jobs) throw new Error(`add_jobs inserted ${rows[0].n} job(s), expected ${jobs}`);
    const queued = await countJobs(utils);
    if (queued !== jobs) throw new Error(`${queued} job(s) queued, expected ${jobs}`);
    // Give the planner statistics for the filled table. Not timed.
    await utils.withPgClient((client) => client.query(`analyze ${SCHEMA}._private_jobs`));

    // 3. Timed: from the first completed job until no unfinished job is left, over the jobs
    // left at that first sight, so the worker's start-up stays out of the rate as it does for
    // runbook's (whose rate is taken from completion timestamps after its first batch).
    runner = await run(workerOptions);
    const runStarted = performance.now();
    let runnerError = null;
    runner.promise.catch((e) => {
      runnerError = e;
    });
    let started = null;
    let counted = jobs;
    for (;;) {
      if (runnerError) throw runnerError;
      const left = await countJobs(utils);
      if (left === 0) break;
      if (started === null && left < jobs) {
        started = performance.now();
        counted = left;
      }
      if (performance.now() - runStarted > timeoutMs) {
        throw new Error(`queue not drained after ${timeoutMs / 1000} s`);
      }
      await sleep(POLL_EVERY_MS);
    }
    if (started === null) throw new Error("the queue emptied between two looks: too few jobs to time");
    const seconds = (performance.now() - started) / 1000;
    await runner.stop();
    await runner.promise;
    runner = null;

    const peakRssMib = process.resourceUsage().maxRSS / 1024; // maxRSS is in KiB
    const result = {
      system: "graphile-worker",
      version: GW_VERSION,
      jobs,
      seconds: Number(seconds.toFixed(3)),
      timed_jobs: counted,
      jobs_per_sec: Number((counted / seconds).toFixed(1)),
      peak_rss_mib: Number(peakRssMib.toFixed(1)),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    if (runner) await runner.stop().catch(() => {});
    await utils.release();
  }
}

main().catch((e) => {
  process.stderr.write(`bench.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
