/*
 * The trace-replay simulator (docs/SIMULATOR.md): a federation file and a
 * trace of jobs replayed in virtual time under Meridian's placement engine
 * or a baseline policy, with the money, bytes and times each one costs.
 * Library code with no clock and no I/O of its own: callers pass documents
 * in and a FILE * for the table and CSV out.
 */
#ifndef MERIDIAN_POLICY_REPLAY_H
#define MERIDIAN_POLICY_REPLAY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

#include "policy/arena.h"
#include "policy/job.h"
#include "policy/policy.h"

/* Who chooses the sites. Values are only ever appended to. */
enum mer_replay_policy {
	MER_RP_MERIDIAN = 0,	 /* the placement engine with a policy file */
	MER_RP_RANDOM = 1,	 /* a feasible site at random (seeded) */
	MER_RP_ROUND_ROBIN = 2,	 /* the next feasible site after the last */
	MER_RP_LEAST_LOADED = 3, /* the feasible site least busy now */
	MER_RP_CHEAPEST = 4,	 /* least compute price; ignores data, waits */
	MER_RP_DATA_LOCAL = 5,	 /* where the stage's biggest input is */
};
#define MER_RP_COUNT 6

/* "meridian", "random", "round-robin", "least-loaded", "cheapest-compute",
 * "data-local". */
const char *mer_replay_policy_name(int policy);
/* Name -> value; MER_EINVAL for an unknown name. */
int mer_replay_policy_parse(const char *s, int *out);

/* ---- traces ---- */

struct mer_trace_job {
	double at_s;	     /* arrival, seconds after the trace's epoch */
	struct mer_job *job; /* owned */
	json_t *spec;	     /* the job document (a reference, owned) */
	double *true_s;	     /* [job->nstages] how long each stage runs */
};

struct mer_trace {
	long long epoch;	    /* unix seconds of t = 0 */
	struct mer_trace_job *jobs; /* by arrival (stable for ties) */
	size_t njobs;
};

/*
 * Builds a trace from records as they appear one per line in a trace file:
 *   {"epoch": N}                           (optional, any position)
 *   {"at": S, "job": {...}, "true_duration_s": {"stage": S, ...}}
 * A stage without a true duration runs for its duration_s; one with
 * neither is an error. Errors name the record: "records[3].job.stages[0]
 * ...". On error *out is NULL.
 */
int mer_trace_from_records(const json_t *records, struct mer_trace **out,
			   char *err, size_t errlen);
/* The same from trace text: JSON Lines; blank lines and lines starting
 * with '#' are skipped; errors are "name:line: ...". */
int mer_trace_parse(const char *name, const char *text, size_t len,
		    struct mer_trace **out, char *err, size_t errlen);
void mer_trace_free(struct mer_trace *t);

/* ---- a replay ---- */

struct mer_replay_opts {
	int policy;	   /* enum mer_replay_policy */
	uint64_t seed;	   /* the random baseline's choices */
	double max_time_s; /* stop at this virtual time; 0: run to the end */
};

/* One stage of one job, as it went. Times are seconds after the epoch. */
struct mer_replay_stage {
	int placed;	   /* 0: never placed (the job is unplaced) */
	int32_t site;	   /* primary site, index in result->sites; -1 */
	unsigned replicas; /* over every site it ran on */
	unsigned nsites;   /* sites it ran on (replicas may spread) */
	double release_s;  /* its `after` stages finished (or arrival) */
	double placed_s;   /* a site was chosen and capacity taken */
	double start_s;	   /* inputs moved, site queue passed: running */
	double end_s;	   /* start + true duration (last replica) */
	double wait_s;	   /* placed - release + the site's queue wait */
	double transfer_s; /* moving its inputs (sum over inputs) */
	double compute_usd, egress_bytes, egress_usd;
	int violation; /* ran in a region a residency rule forbids */
};

struct mer_replay_site {
	const char *name, *region;
	double gpus;	   /* GPUs the site shares with the federation */
	double gpu_busy_s; /* GPU-seconds of running stages */
	double util;	   /* gpu_busy_s / (gpus * horizon_s) */
	double compute_usd;
	size_t stages; /* stages (or replica shares) it ran */
};

struct mer_replay_result {
	struct mer_arena arena;
	int policy;
	size_t jobs, jobs_completed, jobs_unplaced;
	size_t stages, stages_placed, stages_unplaced;
	double compute_usd, egress_bytes, egress_usd, transfer_s;
	double jct_mean_s, jct_p95_s; /* completed jobs: end - arrival */
	double wait_mean_s;	      /* placed stages */
	double horizon_s;	      /* the last stage's end (or max_time_s) */
	double gpus, gpu_busy_s, gpu_util; /* the whole federation */
	size_t residency_violations;	   /* stages */
	size_t engine_calls;		   /* placements asked of the engine */
	size_t mismatches; /* engine choices the simulator could not seat */
	size_t rounds;	   /* distinct event times processed */
	struct mer_replay_site *sites; /* fed order (by name) */
	size_t nsites;
	struct mer_replay_stage *stage; /* job j's stage i: [job0[j] + i] */
	size_t *job0;
	double *jct_s; /* per job; < 0 when it did not complete */
};

/*
 * Replays tr on the federation described by fed_doc (a federation file,
 * docs/SITES.md; the replay builds and changes its own copy). pol is the
 * policy Meridian places with; its residency rules are also what every
 * policy's violations are counted against. Errors: MER_EINVAL (with err)
 * for a federation that does not load, MER_ENOMEM.
 */
int mer_replay_run(const json_t *fed_doc, const struct mer_trace *tr,
		   const struct mer_policy *pol,
		   const struct mer_replay_opts *opts,
		   struct mer_replay_result **out, char *err, size_t errlen);
void mer_replay_result_free(struct mer_replay_result *r);

/* The comparison table people read: one row per result. */
void mer_replay_print_table(FILE *f, struct mer_replay_result *const *r,
			    size_t n);
/* GPU utilization per site, one column per result (at most max_sites
 * rows; 0 for all). */
void mer_replay_print_sites(FILE *f, struct mer_replay_result *const *r,
			    size_t n, size_t max_sites);
/* CSV: one header line, then one line per result. */
void mer_replay_write_csv(FILE *f, struct mer_replay_result *const *r,
			  size_t n);
/* CSV per site: policy,site,region,gpus,gpu_busy_h,utilization,... */
void mer_replay_write_sites_csv(FILE *f, struct mer_replay_result *const *r,
				size_t n);

#endif
