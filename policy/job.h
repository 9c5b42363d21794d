/*
 * Job documents (docs/JOBS.md): a named DAG of stages with resources,
 * datasets and constraints, parsed and validated strictly. Errors name the
 * field ("stages[2].resources.gpu.count: must be a positive integer"), with
 * file:line:column when the text is known. Placement is in policy/place.h.
 */
#ifndef MERIDIAN_POLICY_JOB_H
#define MERIDIAN_POLICY_JOB_H

#include <stddef.h>
#include <jansson.h>

#include "common/json.h"
#include "policy/arena.h"

#define MER_JOB_MAX_STAGES 256
#define MER_JOB_MAX_DATASETS 64 /* inputs or outputs of one stage */
#define MER_JOB_MAX_REPLICAS 10000
#define MER_JOB_MAX_GPUS 100000

/* Priority classes, most urgent first. */
enum mer_prio {
	MER_PRIO_ONLINE = 0,
	MER_PRIO_BATCH = 1,
	MER_PRIO_BEST_EFFORT = 2,
};
#define MER_PRIO_COUNT 3

enum mer_stage_kind {
	MER_KIND_DATA_PREP = 0,
	MER_KIND_TRAINING = 1,
	MER_KIND_INFERENCE = 2,
	MER_KIND_GENERIC = 3,
};
#define MER_KIND_COUNT 4

/* Fabric bits (a stage asks for at most one; a pool offers several). */
enum mer_fabric {
	MER_FABRIC_IB = 1,
	MER_FABRIC_ROCE = 2,
	MER_FABRIC_ETH = 4,
};

/* "online", "batch", "best-effort"; "data-prep", ...; "ib", ... */
const char *mer_prio_name(int prio);
const char *mer_kind_name(int kind);
const char *mer_fabric_name(unsigned bit);
/* Name -> value; MER_EINVAL for unknown names. */
int mer_prio_parse(const char *s, int *out);
int mer_fabric_parse(const char *s, unsigned *out);

/* A dataset a stage reads. */
struct mer_input {
	const char *name;
	double bytes;	    /* given size, or -1: from the catalog/producer */
	const char *region; /* outside the catalog: where it lives, or NULL */
	char **tags;	    /* extra tags (residency), added to the catalog's */
	size_t ntags;
	int producer; /* stage whose output this is, or -1 */
	int output;   /* index in the producer's outputs, or -1 */
};

/* A dataset a stage writes. */
struct mer_output {
	const char *name;
	double bytes;
	char **tags;
	size_t ntags;
};

struct mer_stage {
	const char *name;
	int kind; /* enum mer_stage_kind */
	char **after;
	size_t nafter;
	size_t *deps; /* indices of after[], same order */
	double cpu;   /* cores */
	double memory_mb;
	unsigned gpu_count;
	char **gpu_models; /* acceptable models, in order of preference */
	size_t ngpu_models;
	unsigned fabric; /* one MER_FABRIC_* bit, or 0 for any */
	int gang;	 /* all of it (each replica) in one pool of one site */
	unsigned replicas;
	char **near; /* regions whose users an inference stage serves */
	size_t nnear;
	struct mer_input *inputs;
	size_t ninputs;
	struct mer_output *outputs;
	size_t noutputs;
	double duration_s; /* 0: unknown (history or policy default) */
	const char *image;
	char **command;
	size_t ncommand;
	int preemptible;
};

struct mer_job {
	struct mer_arena arena;
	const char *id;	    /* may be NULL before the broker assigns one */
	const char *tenant; /* "default" when absent */
	const char *name;
	int priority; /* enum mer_prio */
	char **regions_allow, **regions_deny, **sites_allow, **sites_deny;
	size_t nregions_allow, nregions_deny, nsites_allow, nsites_deny;
	double budget_usd;  /* < 0: none */
	long long deadline; /* unix seconds; 0: none */
	struct mer_stage *stages;
	size_t nstages;
	size_t *topo; /* stage indices, every stage after its dependencies */
	/* anc[i * nstages + j] != 0 when stage j is an ancestor of stage i */
	unsigned char *anc;
};

/*
 * Validates root and builds a job. doc (optional) is the document root came
 * from, for file:line:column in errors. On error *out is NULL, err names the
 * field and the return is MER_EINVAL (MER_ENOMEM when memory runs out).
 */
int mer_job_from_json(const json_t *root, const struct mer_json_doc *doc,
		      struct mer_job **out, char *err, size_t errlen);
/* Parses text (a request body) or a file, then validates as above. */
int mer_job_parse(const char *name, const char *text, size_t len,
		  struct mer_job **out, char *err, size_t errlen);
int mer_job_load(const char *path, struct mer_job **out, char *err,
		 size_t errlen);
void mer_job_free(struct mer_job *job);

/* Index of the stage called name, or -1. */
int mer_job_stage_index(const struct mer_job *job, const char *name);

#endif
