/*
 * Scheduler adapters: one const struct adapter_ops per scheduler (slurm,
 * kubernetes, yarn, sim), all registered in one table (adapter.c). An
 * adapter turns its scheduler's view into normalized capacity and runs
 * stages as local jobs; it knows nothing of the broker, the link or the
 * summary's JSON shape (summary.c does that).
 */
#ifndef MERIDIAN_AGENT_ADAPTER_H
#define MERIDIAN_AGENT_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

struct mer_agent_cfg;

#define MER_AGENT_NAME_MAX 128 /* pool names, kinds, stage ids, job ids */
#define MER_AGENT_MAX_KINDS 16 /* cpu, memory_mb and GPU models per pool */
#define MER_AGENT_MAX_POOLS 32

/* One resource kind in one pool, in the kind's unit (cores, MB, GPUs). */
struct mer_agent_res {
	char kind[64]; /* "cpu", "memory_mb", "gpu:<model>" */
	double total;
	double allocatable; /* total minus nodes down or drained */
	double free;	    /* allocatable minus what is in use */
	double pending;	    /* asked for by jobs waiting in the queue */
};

struct mer_agent_pool {
	char name[MER_AGENT_NAME_MAX]; /* partition, node pool, queue */
	struct mer_agent_res res[MER_AGENT_MAX_KINDS];
	size_t nres;
	double est_wait_s;
	int pending_jobs;
};

/* What a probe finds. */
struct mer_agent_capacity {
	char version[MER_AGENT_NAME_MAX]; /* scheduler version, "" if unknown */
	struct mer_agent_pool pools[MER_AGENT_MAX_POOLS];
	size_t npools;
};

/* The pool named name, added (empty) when absent; NULL when full. */
struct mer_agent_pool *mer_agent_cap_pool(struct mer_agent_capacity *cap,
					  const char *name);
/* The resource kind in a pool, added (zero) when absent; NULL when full. */
struct mer_agent_res *mer_agent_pool_res(struct mer_agent_pool *pool,
					 const char *kind);
/* The same, looking only. */
const struct mer_agent_res *
mer_agent_pool_find(const struct mer_agent_pool *pool, const char *kind);

/* A stage as the broker asks for it to be run (see docs/AGENT.md). */
struct mer_agent_stage {
	char id[MER_AGENT_NAME_MAX];   /* broker's stage id, unique and
					  attempt-scoped ("<job>/<stage>#<n>"),
					  [A-Za-z0-9._-:/#] */
	char pool[MER_AGENT_NAME_MAX]; /* "" = the adapter's default pool */
	char *command;		       /* shell command (sh -c); required */
	char *image;		       /* container image (kubernetes) */
	int64_t cpus;		       /* per replica; 0 = 1 */
	int64_t memory_mb;	       /* per replica; 0 = scheduler default */
	char gpu_model[MER_AGENT_NAME_MAX]; /* "" = any / none */
	int64_t gpus;			    /* per replica */
	int64_t replicas;		    /* 0 = 1 */
	int gang;			    /* all replicas or none */
	int64_t time_limit_s;		    /* 0 = none */
	double duration_s; /* declared runtime (sim runs for this) */
	int exit_code;	   /* sim: the exit code the stage ends with */
	char *output;	   /* stdout file (slurm); NULL = default */
	char *workdir;	   /* working directory; NULL = default */
};

void mer_agent_stage_clear(struct mer_agent_stage *s);

enum mer_agent_stage_state {
	MER_AGENT_STAGE_PENDING = 0, /* queued by the scheduler */
	MER_AGENT_STAGE_RUNNING = 1,
	MER_AGENT_STAGE_SUCCEEDED = 2,
	MER_AGENT_STAGE_FAILED = 3,
	MER_AGENT_STAGE_CANCELLED = 4,
	MER_AGENT_STAGE_LOST = 5 /* the scheduler no longer knows the job */
};

const char *mer_agent_stage_state_name(enum mer_agent_stage_state s);
/* Succeeded, failed, cancelled or lost. */
int mer_agent_stage_state_final(enum mer_agent_stage_state s);

struct mer_agent_stage_status {
	enum mer_agent_stage_state state;
	int exit_code;	  /* for finished stages; -1 unknown */
	char reason[256]; /* scheduler's words, "" if none */
};

/*
 * The contract. Every member may block on its scheduler (HTTP calls bounded
 * by the site config's scheduler.timeout); none is called concurrently on
 * one adapter instance (the agent serializes them). err/errlen receive one
 * line for people; codes are err.h values: MER_EUNREACHABLE when the
 * scheduler cannot be reached, MER_EREMOTE when it answered with an error,
 * MER_EPARSE when its answer is malformed (the adapter must survive it).
 */
struct adapter_ops {
	const char *kind; /* "slurm", "kubernetes", "yarn", "sim" */
	/* Creates an instance for cfg (which outlives it). No I/O that may
	 * fail because the scheduler is down: that is probe's business. */
	int (*open)(const struct mer_agent_cfg *cfg, void **inst, char *err,
		    size_t errlen);
	/* Fills cap (zeroed by the caller) with every pool the scheduler
	 * has; the summary keeps the shared ones. */
	int (*probe)(void *inst, struct mer_agent_capacity *cap, char *err,
		     size_t errlen);
	/* Submits a stage; job_id (n bytes) gets the scheduler's id for it.
	 * The job must carry the stage id (job name, label) so that find
	 * can see it after a restart. Not idempotent by itself: the runner
	 * calls find first. */
	int (*submit)(void *inst, const struct mer_agent_stage *st,
		      char *job_id, size_t n, char *err, size_t errlen);
	/* Status of a job this adapter submitted. MER_ENOTFOUND when the
	 * scheduler has no such job (the runner reports it lost). */
	int (*status)(void *inst, const char *job_id,
		      struct mer_agent_stage_status *out, char *err,
		      size_t errlen);
	/* Looks for a job carrying stage_id (after a restart lost the state
	 * file or crashed between submit and save). MER_ENOTFOUND if none. */
	int (*find)(void *inst, const char *stage_id, char *job_id, size_t n,
		    char *err, size_t errlen);
	/* Cancels a job; a job that has ended already is not an error. */
	int (*cancel)(void *inst, const char *job_id, char *err, size_t errlen);
	/* Frees the instance; accepts NULL. */
	void (*close)(void *inst);
};

extern const struct adapter_ops mer_agent_slurm_ops;
extern const struct adapter_ops mer_agent_k8s_ops;
extern const struct adapter_ops mer_agent_yarn_ops;
extern const struct adapter_ops mer_agent_sim_ops;

/* The registry: the adapter for a kind, or NULL. */
const struct adapter_ops *mer_agent_adapter_find(const char *kind);
/* Registered kinds, for --help: a NULL-terminated list. */
const char *const *mer_agent_adapter_kinds(void);

#endif
