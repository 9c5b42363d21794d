/*
 * The placement engine: given a job, a federation snapshot and a policy,
 * choose a site for every stage so that money plus the value of time is
 * least over the whole DAG, and explain the choice site by site
 * (docs/POLICY.md "How placement works"). Pure computation: no I/O, no
 * clocks (the time is an input), no global state; the broker, the dry-run
 * endpoint and the simulator all call this same code.
 *
 * An engine binds one federation snapshot and one policy, both of which
 * must outlive it and every placement it returns. It keeps the capacity and
 * quota reserved by earlier placements of a round (batch placement), so one
 * engine must not be used by two threads at once; build one per round or
 * per thread (building is O(sites)). It keeps the scratch memory of its
 * last placement (a few arrays per site and stage) to reuse in the next.
 */
#ifndef MERIDIAN_POLICY_PLACE_H
#define MERIDIAN_POLICY_PLACE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "policy/arena.h"
#include "policy/fed.h"
#include "policy/job.h"
#include "policy/policy.h"

/* ---- inputs the broker adds to the snapshot ---- */

struct mer_usage_gpu {
	const char *model; /* "a800", not "gpu:a800" */
	double gpus;
};

/* What a tenant holds now, outside the job being placed. */
struct mer_usage {
	const struct mer_usage_gpu *gpus;
	size_t ngpus;
	long long concurrent_stages;
	double spent_usd; /* counted against the tenant's budget */
};

/* Learned means for a stage key at a site, from finished stages. */
struct mer_history_entry {
	const char *site;
	const char *key;  /* "job:<job name>/<stage name>" or "kind:<kind>" */
	double runtime_s; /* < 0: unknown */
	double wait_s;	  /* < 0: unknown */
	double samples;
};

/* A stage that keeps its site: running there, or finished with its
 * outputs there. Re-placement of a lost or preempted stage leaves it out. */
struct mer_stage_fix {
	const char *stage;
	const char *site;
	int finished;
};

struct mer_place_input {
	const struct mer_job *job;
	const struct mer_usage *usage; /* NULL: nothing in use */
	const struct mer_history_entry *history;
	size_t nhistory;
	const struct mer_stage_fix *fixed;
	size_t nfixed;
	long long now; /* unix seconds: deadlines and heartbeat age */
};

/* The same inputs read from JSON ({"usage": ..., "history": [...],
 * "fixed": [...], "now": N}, docs/POLICY.md), owning their memory. */
struct mer_place_extras {
	struct mer_arena arena;
	struct mer_usage usage;
	struct mer_history_entry *history;
	size_t nhistory;
	struct mer_stage_fix *fixed;
	size_t nfixed;
	long long now;
};
int mer_place_extras_from_json(const json_t *root,
			       const struct mer_json_doc *doc,
			       struct mer_place_extras **out, char *err,
			       size_t errlen);
void mer_place_extras_free(struct mer_place_extras *x);

/* ---- the result and its explanation ---- */

/* Why a site cannot take a stage. Values appear in JSON by name
 * (mer_reason_name) and are only ever appended to. */
enum mer_reason {
	MER_R_OK = 0,
	MER_R_FIXED,	     /* the stage keeps another site */
	MER_R_UNHEALTHY,     /* site health is not "healthy" */
	MER_R_DRAINED,	     /* site is drained */
	MER_R_STALE,	     /* heartbeat older than site_stale_after_s */
	MER_R_TENANT,	     /* site does not accept the tenant */
	MER_R_SITE_DENIED,   /* job constraints exclude the site */
	MER_R_REGION_DENIED, /* job constraints exclude the region */
	MER_R_RESIDENCY,     /* a residency rule forbids the region */
	MER_R_INPUT_MISSING, /* an input has no usable replica anywhere */
	MER_R_GPU_MODEL,     /* none of the acceptable GPU models */
	MER_R_FABRIC,	     /* no pool with the fabric and resources */
	MER_R_CAPACITY,	     /* not enough free shared capacity */
	MER_R_GANG,	     /* fits only split over pools */
	MER_R_QUOTA,	     /* tenant GPU quota */
	MER_R_QUOTA_STAGES,  /* tenant concurrent-stage quota */
	MER_R_BUDGET,	     /* compute alone exceeds the budget left */
	MER_R_DEADLINE,	     /* wait + runtime end after the deadline */
	MER_R_TIER,	     /* an earlier tier can take the stage */
	MER_R_REPLICAS,	     /* not all replicas fit on feasible sites */
};
#define MER_R_COUNT 20

const char *mer_reason_name(int reason);

/* One site for one stage: a rejection, or the score terms. For a stage
 * with producers the terms include moving their outputs from where the
 * producers were placed. A placement keeps only a compact record per site
 * (struct mer_site_brief) and the totals; mer_placement_eval rebuilds this
 * full form for one site on demand. */
struct mer_site_eval {
	uint32_t site;
	uint8_t reason;	   /* enum mer_reason; MER_R_OK = feasible */
	uint8_t preempts;  /* fits only by preempting lower classes */
	int16_t kind;	   /* chosen GPU kind, or the kind a reason is about */
	int32_t aux;	   /* reason detail: rule, input or tier index */
	unsigned replicas; /* replicas this site would hold */
	double need, have; /* reason figures */
	double compute_usd, egress_usd, transfer_s, wait_s, runtime_s;
	double policy_usd; /* preferences, preemption, near-miss penalties */
	double spill_usd;  /* replicas that do not fit here, placed elsewhere */
	double money_usd;  /* compute + egress (+ spilled replicas' money) */
	double total;	   /* the weighted score; lower is better */
};

/* What a placement keeps per site and stage (24 bytes instead of the 104
 * of mer_site_eval): the figures that depend on capacity, history or the
 * filter; every other term is recomputed from the federation, policy and
 * job by mer_placement_eval. */
struct mer_site_brief {
	uint8_t reason;	  /* enum mer_reason */
	uint8_t preempts; /* as in mer_site_eval */
	int16_t kind;	  /* as in mer_site_eval */
	int32_t aux;	  /* rejected: reason detail; feasible: replicas */
	double a, b;	  /* rejected: need, have; feasible: wait, runtime */
};

/* Stage data the on-demand explanation needs (opaque, in the arena). */
struct mer_stage_expl;

enum mer_stage_status {
	MER_STAGE_PLACED = 0,
	MER_STAGE_PENDING = 1,
	MER_STAGE_FIXED = 2,
};

struct mer_replica_share {
	uint32_t site;
	unsigned replicas;
	int16_t gpu_kind; /* sites may differ in the model they offer */
};

struct mer_stage_result {
	int status;	  /* enum mer_stage_status */
	int32_t site;	  /* chosen (primary) site index, -1 when pending */
	int16_t gpu_kind; /* fed kind index, -1 for none */
	int preempts;
	struct mer_replica_share *shares; /* replicas by site */
	size_t nshares;
	struct mer_site_brief *brief; /* one per site, in site (name) order */
	double *totals; /* per site: the score total of feasible sites */
	struct mer_stage_expl *expl;
	size_t nfeasible;
	size_t nreason[MER_R_COUNT]; /* sites per reason (MER_R_OK too) */
	char note[320]; /* why pending, or how the site was chosen */
};

struct mer_placement {
	struct mer_arena arena;
	const struct mer_fed *fed;
	const struct mer_policy *pol;
	const struct mer_job *job;
	struct mer_stage_result *stages; /* job order */
	size_t nstages;
	int complete;		     /* every stage placed or fixed */
	const char *method;	     /* "independent", "chain-dp", "tree-dp",
					"local-search", "none" */
	double total;		     /* joint objective of the plan */
	double stage_by_stage_total; /* the greedy plan's objective */
	double money_usd;
	double makespan_s; /* critical path: waits, transfers, runtimes */
	char note[320];
};

/* ---- the engine ---- */

struct mer_engine;

int mer_engine_new(const struct mer_fed *fed, const struct mer_policy *pol,
		   struct mer_engine **out);
void mer_engine_free(struct mer_engine *e);
/* Forgets what earlier placements of the round reserved. */
void mer_engine_reset(struct mer_engine *e);

/*
 * Places one job. A job that cannot be placed is not an error: its stages
 * are MER_STAGE_PENDING with reasons. With reserve, the capacity, quota and
 * budget the placement uses are held in the engine for later placements of
 * the same round. Errors: MER_EINVAL (fixed stage or site unknown),
 * MER_ENOMEM. The placement borrows the job, federation and policy.
 */
int mer_engine_place(struct mer_engine *e, const struct mer_place_input *in,
		     int reserve, struct mer_placement **out);
/* Places n jobs in order, each reserving for the next (one round). out[]
 * gets n placements; on error none are returned. */
int mer_engine_place_batch(struct mer_engine *e,
			   const struct mer_place_input *in, size_t n,
			   struct mer_placement **out);
void mer_placement_free(struct mer_placement *p);

/* The full explanation of site for stage, rebuilt from the compact record
 * (bit for bit the terms the engine scored with). For rejected sites the
 * score terms and total are 0. */
void mer_placement_eval(const struct mer_placement *p, size_t stage,
			uint32_t site, struct mer_site_eval *out);

/* "capacity: needs 8 gpu:a800, 4 free to the federation" */
void mer_place_reason_text(const struct mer_placement *p, size_t stage,
			   const struct mer_site_eval *ev, char *buf, size_t n);

/*
 * The placement as JSON (the API's placement record). max_candidates 0
 * lists every site for every stage; otherwise the chosen site, the best
 * max_candidates feasible sites and max_candidates rejected ones, plus
 * counts of every rejection reason.
 */
json_t *mer_placement_to_json(const struct mer_placement *p,
			      size_t max_candidates);

/*
 * Rejects requests no site of the federation could ever hold (by
 * allocatable shared capacity, not what is free now), naming the field:
 * "stages[1].resources.gpu.count: 64 GPUs requested, the largest site
 * has 32 of a800". The broker calls it at submission.
 */
int mer_place_check_job(const struct mer_job *job, const struct mer_fed *fed,
			char *err, size_t errlen);

#endif
