/*
 * The agent's running core, independent of the link: probes the scheduler
 * (with backoff while it is unreachable), builds summaries, launches and
 * cancels stages idempotently, follows them to the end and keeps the
 * stage -> local job map and unacknowledged stage events in a state file
 * written atomically, so a restarted agent neither loses nor duplicates a
 * stage. Not thread-safe: one thread drives an instance.
 */
#ifndef MERIDIAN_AGENT_RUNNER_H
#define MERIDIAN_AGENT_RUNNER_H

#include <stddef.h>

#include <jansson.h>

#include "site-agent/adapter.h"
#include "site-agent/config.h"

struct mer_agent;

/*
 * Opens the adapter for cfg->kind, loads cfg->state_file (a missing file is
 * an empty state; a corrupt one is MER_EPARSE, never silently dropped) and
 * reconciles every stage it lists with the scheduler (see
 * mer_agent_reconcile), after a first probe so that adapters know the
 * cluster before they resubmit anything. Holds an exclusive flock on
 * "<state_file>.lock" until closed: a second agent on the same state file gets
 * MER_EBUSY. cfg must outlive the agent.
 */
int mer_agent_open(const struct mer_agent_cfg *cfg, struct mer_agent **out,
		   char *err, size_t errlen);
void mer_agent_close(struct mer_agent *a);

/*
 * Open for --print-summary: loads the state file (its stages count in
 * federation_used) but never reconciles, launches, cancels, follows or
 * saves, and takes no lock. Launch/cancel answer MER_ESTATE.
 */
int mer_agent_open_readonly(const struct mer_agent_cfg *cfg,
			    struct mer_agent **out, char *err, size_t errlen);

/* For tests: an adapter other than the registry's for cfg->kind. */
int mer_agent_open_with(const struct mer_agent_cfg *cfg,
			const struct adapter_ops *ops, struct mer_agent **out,
			char *err, size_t errlen);

/*
 * Probes the scheduler unless a retry is not due yet (after a failure the
 * wait doubles from 1 s up to cfg->retry_max_ms). On failure the site is
 * marked unhealthy with the reason and the last good capacity is kept.
 * Returns the probe's code (MER_EBUSY when skipped for backoff).
 */
int mer_agent_probe(struct mer_agent *a);
/* Forgets the backoff so the next probe runs at once. */
void mer_agent_probe_now(struct mer_agent *a);
/* "" when healthy, else why not. */
const char *mer_agent_unhealthy_reason(const struct mer_agent *a);

/* The summary {"site": ..., "status": ...} (new reference). */
int mer_agent_summary(struct mer_agent *a, json_t **out);

/*
 * Handles one broker command (docs/AGENT.md): {"id", "type": "launch",
 * "stage": {...}} or {"id", "type": "cancel", "stage_id": ...}; others
 * ("drain", "preempt") are acknowledged as unsupported. *reply gets an
 * acknowledgement object {"command": id, "ok": bool, "result": "launched"
 * | "already_running" | "already_finished" | "cancelling", "error": ...}
 * (new reference). A repeated launch of a stage the agent holds is never
 * a second job: "already_running", or "already_finished" for one that has
 * ended, both with the stage's "state", "exit_code" and "job_id". Stage ids
 * are attempt-scoped ("<job>/<stage>#<attempt>"): a new attempt is a new
 * id. Returns 0, or MER_ENOMEM when not even the reply could be
 * made; a failed command is reported in the reply, not as a code.
 */
int mer_agent_command(struct mer_agent *a, const json_t *cmd, json_t **reply);

/* Launch and cancel, for callers without JSON commands. *already: 0 when
 * launched now, 1 when held and not ended, 2 when held and ended. */
int mer_agent_launch(struct mer_agent *a, const struct mer_agent_stage *st,
		     int *already, char *err, size_t errlen);
int mer_agent_cancel(struct mer_agent *a, const char *stage_id, char *err,
		     size_t errlen);

/*
 * Checks every unfinished stage with the scheduler and records events for
 * changes (started, finished, failed, cancelled, lost). Skipped while the
 * scheduler is unreachable. Returns the number of new events, or < 0 as
 * -code.
 */
int mer_agent_tick(struct mer_agent *a);

/* Checks the stages of the state file after a restart: jobs found again
 * are followed; stages whose job is gone are looked for by stage id, and a
 * launch interrupted before its job id was saved is found or submitted
 * again. Done by open; callable again after the scheduler comes back. */
int mer_agent_reconcile(struct mer_agent *a);

/* Events not yet acknowledged, oldest first (new reference to an array of
 * {"id", "stage", "event", "exit_code", "job_id", "reason", "at"}). */
json_t *mer_agent_events(struct mer_agent *a);
/* Drops acknowledged events (by id) and saves the state. */
int mer_agent_ack_events(struct mer_agent *a, const json_t *ids);

/* The state of a stage the agent holds: 0, or MER_ENOTFOUND. job_id may be
 * NULL. */
int mer_agent_stage_get(struct mer_agent *a, const char *stage_id,
			enum mer_agent_stage_state *state, int *exit_code,
			char *job_id, size_t n);
/* Number of stages held (running or finished but not yet forgotten). */
size_t mer_agent_stage_count(const struct mer_agent *a);

/* Parses a stage object of a launch command into st (cleared first).
 * err gets "stage.<field>: what". */
int mer_agent_stage_parse(const json_t *j, struct mer_agent_stage *st,
			  char *err, size_t errlen);

#endif
