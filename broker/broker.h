/*
 * The broker process as a library: it owns the etcd client, the job store,
 * membership, tenants, the policy, the placer thread and the REST server,
 * and can be started and stopped in one process (bin/meridian-broker's
 * main.c, and tests). The struct is shared by broker.c (life cycle and
 * reload), api.c (REST handlers) and placer.c (placement); nothing outside
 * broker/ should touch its fields.
 */
#ifndef MERIDIAN_BROKER_BROKER_H
#define MERIDIAN_BROKER_BROKER_H

#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "broker/membership.h"
#include "broker/metrics.h"
#include "broker/settings.h"
#include "broker/store.h"
#include "broker/tenants.h"
#include "common/etcd.h"
#include "common/http.h"
#include "common/keys.h"
#include "common/link.h"
#include "policy/fed.h"
#include "policy/place.h"
#include "policy/policy.h"

/* Stage and job states (DESIGN §3). */
#define MER_ST_PENDING "pending"
#define MER_ST_PLACED "placed"
#define MER_ST_DISPATCHED "dispatched"
#define MER_ST_RUNNING "running"
#define MER_ST_SUCCEEDED "succeeded"
#define MER_ST_FAILED "failed"
#define MER_ST_CANCELLED "cancelled"

/* A policy in force: the parsed form and where it came from. */
struct mer_policy_ref {
	struct mer_policy *pol;
	json_t *doc;	 /* the JSON it was parsed from */
	int64_t version; /* etcd version number; 0 = built-in */
	long long applied_at;
	int refs;
};

/* A federation snapshot shared by readers (counted). */
struct mer_fed_ref {
	struct mer_fed *fed;
	int refs;
	long long built_ms; /* monotonic */
	uint64_t gen;	    /* b->fed_gen when the build started */
};

struct mer_broker {
	struct mer_broker_cfg cfg; /* owned */
	char *cfg_path;
	struct mer_etcd *etcd;
	struct mer_store *store;
	struct mer_membership *members;
	struct mer_metrics *metrics;
	struct mer_http_server *http;
	struct mer_link_server *link; /* NULL without listen.link */
	struct mer_link_server_ops link_ops;
	int have_key;
	char key_fp[MER_KEY_FP_SIZE];

	pthread_rwlock_t lock; /* tenants, policy, fed_file */
	struct mer_tenants *tenants;
	struct mer_policy_ref *policy;
	json_t *fed_file; /* static sites/links/defaults, or NULL */

	pthread_mutex_t fmu; /* fed_cache */
	struct mer_fed_ref *fed_cache;
	uint64_t fed_gen; /* bumped by every invalidation */
	int fed_building; /* a reader is rebuilding the cache */

	/* placer (placer.c) */
	pthread_mutex_t pmu;
	pthread_cond_t pcv;
	char (*queue)[MER_JOB_ID_SIZE];
	size_t nqueue, capqueue;
	int pstop, prunning, kick;
	pthread_t pthread;
	struct job_table *jobs;	 /* known jobs' states (metrics, retries) */
	struct pre_table *pre;	 /* live preemptible stages (pmu) */
	struct hist_cache *hist; /* learned history (pmu) */
	struct rep_table *reps;	 /* outputs stored at sites (pmu) */
	struct gpu_table *gpus;	 /* GPUs of live stages by model (pmu) */
	/* the federation snapshot builder's cache (placer.c), shared by
	 * placement rounds and the API's rebuilds; one build at a time */
	pthread_mutex_t smu;
	struct snap_cache *snap;

	/* dispatch.c: when each site last reported, and which are lost */
	struct site_watch *watch;
	/* dispatch.c: latest summary per site, flushed to etcd in batches */
	struct site_reports *reports;

	/* leader.c: the election; role is held for reading by REST writes
	 * (mer_leader_enter) and for writing while the leader-only work
	 * (link, placer, dispatch) starts or stops. */
	struct mer_leader *leader;
	pthread_rwlock_t role;
};

/* Loads the config at path and builds a broker (does not listen). err gets
 * one line naming the file and setting at fault. */
int mer_broker_new(const char *cfg_path, struct mer_broker **out, char *err,
		   size_t errlen);
/* Loads state from etcd, starts the placer and the REST server. */
int mer_broker_start(struct mer_broker *b, char *err, size_t errlen);
/* The REST port (for configs that say port 0). */
int mer_broker_http_port(const struct mer_broker *b);
/* Re-reads the tenants and policy files (SIGHUP). A bad file is refused
 * and the running one kept; err says why. */
int mer_broker_reload(struct mer_broker *b, char *err, size_t errlen);
void mer_broker_stop(struct mer_broker *b);
void mer_broker_free(struct mer_broker *b);

/* ---- shared inside broker/ -------------------------------------------- */

/* The current policy (a counted reference): release with ..._put. */
struct mer_policy_ref *mer_broker_policy_get(struct mer_broker *b);
void mer_broker_policy_put(struct mer_broker *b, struct mer_policy_ref *p);
/*
 * Validates text as a policy and makes it the current one, stored as the
 * next version in etcd (txn guarded by the current pointer's revision).
 * MER_EINVAL/MER_EPARSE with err naming file:line:col; *version gets the
 * new number.
 */
int mer_broker_policy_apply(struct mer_broker *b, const char *name,
			    const char *text, size_t len, const char *by,
			    int64_t *version, char *err, size_t errlen);

/*
 * The snapshot, rebuilt when the cached one is older than max_age_ms (0:
 * always) by the placer's builder (mer_placer_snapshot: in-memory
 * summaries, cached site records), and only by one reader at a time when
 * max_age_ms > 0 (the others take the expired one meanwhile). Release with
 * mer_broker_fed_put. Site changes made through the API call
 * mer_broker_fed_invalidate so that the next reader rebuilds.
 */
int mer_broker_fed_get(struct mer_broker *b, long max_age_ms,
		       struct mer_fed_ref **out, char *err, size_t errlen);
void mer_broker_fed_put(struct mer_fed_ref *r);
void mer_broker_fed_invalidate(struct mer_broker *b);
/* Builds a snapshot of generation gen into *fed. */
typedef int (*mer_broker_fed_builder)(struct mer_broker *b, uint64_t gen,
				      struct mer_fed **fed, char *err,
				      size_t errlen);
/*
 * A fresh snapshot of generation gen, made by build and stamped now,
 * published as the cached one unless an invalidation came meanwhile (the
 * caller may use it either way). builder: the caller set fed_building,
 * cleared here whatever the outcome. Shared by mer_broker_fed_get and the
 * placer's rounds.
 */
int mer_broker_fed_build(struct mer_broker *b, uint64_t gen, long long now,
			 int builder, mer_broker_fed_builder build,
			 struct mer_fed_ref **out, char *err, size_t errlen);

/* placer.c */
int mer_placer_start(struct mer_broker *b);
void mer_placer_stop(struct mer_broker *b);
void mer_placer_free_table(struct mer_broker *b);
/* Queues a job for placement (on store, on retry). */
void mer_placer_enqueue(struct mer_broker *b, const char *id);
/* Wakes the placer to retry pending jobs now (sites changed). */
void mer_placer_kick(struct mer_broker *b);
/* Records a job's current state for the gauges. */
void mer_placer_note(struct mer_broker *b, const json_t *rec);
/* Adds to site (a snapshot's site JSON) the capacity the broker's own
 * live preemptible stages hold there, by class ("preemptible" of each
 * resource of its first pool that has the kind), and the outputs stages
 * made there (mer_placer_replica_note) to its "datasets" when the site
 * does not list a dataset of that name already. */
void mer_placer_annotate_site(struct mer_broker *b, const char *site,
			      json_t *s);
/* A finished-stage history record as written to etcd (o: "runtime_s",
 * "wait_s", "samples"), kept for the engine. */
void mer_placer_history_note(struct mer_broker *b, const char *tenant,
			     const char *job, const char *stage,
			     const char *site, const json_t *o);
/* An output replica as written to "<p>/replicas/<site>/<name>" (o:
 * "name", "bytes", "tags"; "job", "stage" informational), kept for the
 * snapshots; a newer one of the same name at the site replaces it. */
void mer_placer_replica_note(struct mer_broker *b, const char *site,
			     const json_t *o);
/* Forgets site's output replicas (a revoke deleted them in etcd), so a
 * site joining again under that name starts without them. */
void mer_placer_replica_forget(struct mer_broker *b, const char *site);
/*
 * Builds the federation as the engine sees it (static sites, the agents'
 * summaries from memory over etcd's copy, minus revoked sites, drained
 * marks, lost sites down, the broker's own stages annotated) from the
 * broker's snapshot cache (site records read again after an invalidation,
 * and at least every 10 s). gen: b->fed_gen when the caller began. Builds
 * run one at a time. mer_broker_fed_get calls it; the placer's rounds
 * use the same cache.
 */
int mer_placer_snapshot(struct mer_broker *b, uint64_t gen,
			struct mer_fed **fed, char *err, size_t errlen);
/* Drops that cache (the placer stops: the next term reads etcd anew). */
void mer_placer_snapshot_drop(struct mer_broker *b);
/* Writes the jobs/stages-by-state gauges. */
void mer_placer_render(struct mer_broker *b, FILE *out);

/* dispatch.c: the agent link, launches, events, cancels. */
int mer_dispatch_start(struct mer_broker *b, char *err, size_t errlen);
void mer_dispatch_stop(struct mer_broker *b);
/* Launches the job's stages that are ready (placed, dependencies done). */
void mer_dispatch_job(struct mer_broker *b, const char *id);
/* Sets a job's state from its stages' (DESIGN §3; a job with a stage
 * waiting for a site and none live is pending) and updated_at. */
void mer_dispatch_job_state(json_t *rec, long long now);
/* Sends again the commands a record has in flight (after a restart, and
 * cancels after DELETE). */
void mer_dispatch_resend(struct mer_broker *b, const json_t *rec);

/*
 * Site liveness (dispatch.c, docs/STATE.md "Lost sites"). Sites that hold
 * stages are watched from the first launch (or from the broker's start for
 * what it resumes); one silent for sites.lost_after report intervals is
 * marked lost, its unfinished stages return to pending for re-placement,
 * and when it reports again it is told to cancel the copies it still has.
 */
void mer_dispatch_watch(struct mer_broker *b, const char *site);
/* Sends a live stage at site back to pending (by: who preempted it) and
 * tells the site to cancel its copy. */
int mer_dispatch_preempt(struct mer_broker *b, const char *job,
			 const char *stage, const char *site, const char *by);
/* Marks silent sites lost (called by the placer thread every round). */
void mer_dispatch_check_sites(struct mer_broker *b);
void mer_dispatch_free_watch(struct mer_broker *b);
/* The sites' latest summaries as received (name -> snapshot with
 * last_heartbeat = when the broker got it; new reference, maybe empty).
 * Newer than etcd's site-reports/ by up to one flush (~250 ms). */
json_t *mer_dispatch_reports(struct mer_broker *b);

/* Opens another etcd client with the broker's settings (the election's
 * own, unfenced one). */
int mer_broker_etcd_open(struct mer_broker *b, struct mer_etcd **out, char *err,
			 size_t errlen);
/*
 * The policy at start, and again on becoming leader: the policy file's when
 * it differs from etcd's current one (applied as a new version: leader
 * only; a follower uses it in memory), else etcd's current one, else the
 * built-in default.
 */
int mer_broker_policy_load(struct mer_broker *b, char *err, size_t errlen);
/* Followers: takes etcd's current policy when its version changed (the
 * leader applied one). */
void mer_broker_policy_follow(struct mer_broker *b);

/*
 * leader.c: leader election and fencing (docs/STATE.md "Leader"). Each
 * broker campaigns for "<p>/leader" on an etcd lease; the winner's epoch
 * is the key's create_revision, every write of b->etcd is fenced by it
 * (mer_etcd_guard_set), and only the leader runs the link, the placer
 * and dispatch. A guarded write that fails, a lost lease or a changed key
 * ends the term: the work stops and the broker campaigns again.
 */
int mer_leader_start(struct mer_broker *b, char *err, size_t errlen);
/* Steps down (stopping the leader's work) and resigns: the key's lease is
 * revoked so a follower takes over at once. */
void mer_leader_stop(struct mer_broker *b);
void mer_leader_free(struct mer_broker *b);

struct mer_leader_view {
	int leading;   /* this broker leads */
	int64_t epoch; /* the leader's; 0 when none is known */
	char id[129];
	char rest[256]; /* the leader's advertised REST URL; "" = none */
	char link[256];
};
void mer_leader_view(struct mer_broker *b, struct mer_leader_view *v);
/* For REST writes: 1 when this broker leads, with the role held (call
 * mer_leader_leave after the write); 0 when it does not (nothing held). */
int mer_leader_enter(struct mer_broker *b, int64_t *epoch);
void mer_leader_leave(struct mer_broker *b);
/* The epoch while leading, else 0 (commands carry it). */
int64_t mer_leader_epoch(struct mer_broker *b);

/* dispatch.c: forgets the in-memory site liveness and summaries (a
 * broker that stops leading; the next term starts from etcd). */
void mer_dispatch_reset(struct mer_broker *b);

/* api.c */
int mer_api_register(struct mer_broker *b);
/* Sets one flag ("drained", "revoked", "lost") of a site's status record
 * in etcd (read-modify-write guarded by its mod_revision). */
int mer_broker_site_flag(struct mer_broker *b, const char *name,
			 const char *flag, int on);

#endif
