/*
 * The site config (docs/AGENT.md): who the site is, how to reach its
 * scheduler, what it shares with the federation, its prices, bandwidth and
 * datasets, and where the agent keeps its state. Loaded through
 * common/config.h, so errors are "file:line:column: setting: what".
 */
#ifndef MERIDIAN_AGENT_CONFIG_H
#define MERIDIAN_AGENT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/config.h"

enum mer_agent_sched {
	MER_AGENT_SLURM = 0,
	MER_AGENT_KUBERNETES = 1,
	MER_AGENT_YARN = 2,
	MER_AGENT_SIM = 3
};

struct mer_agent_cfg {
	/* site */
	char *name, *region, *zone;
	json_t *labels; /* object of strings */
	/* scheduler */
	int kind;	    /* enum mer_agent_sched */
	char *url;	    /* "unix:///path", "http://..", "https://.." */
	char *user;	    /* slurm: X-SLURM-USER-NAME */
	char *token;	    /* slurm JWT, kubernetes bearer token (secret) */
	char *token_file;   /* read at open when token is empty */
	char *ca_file;	    /* TLS CA for https */
	bool insecure;	    /* skip TLS verification (tests only) */
	char *namespace_;   /* kubernetes namespace */
	bool volcano;	    /* kubernetes: gang stages as Volcano Jobs */
	char *queue;	    /* volcano queue / yarn default queue / partition */
	char *api_version;  /* slurm: force an OpenAPI version, "" = discover */
	char *sim_file;	    /* sim: the simulated site */
	double time_scale;  /* sim: stage seconds per real second */
	int64_t timeout_ms; /* per scheduler request */
	/* sharing */
	double share_fraction; /* default maximum fraction offered */
	json_t *share_pools;   /* ["p", {"name": "q", "fraction": 0.5,
				  "fabric": ["ib"]}]; [] = every pool */
	struct mer_strlist fabric, storage;
	/* prices and WAN */
	json_t *gpu_hour; /* {"a100": 2.5} */
	double core_hour, memory_gb_hour, egress_gb, wan_gbps;
	json_t *datasets; /* [{"name", "bytes", "path", "tags"}] */
	/* agent */
	char *state_file;
	char *key_file;
	char *broker_url;
	char *broker_key;
	int64_t report_interval_ms;
	int64_t poll_interval_ms; /* status polling of running stages */
	int64_t retry_max_ms;	  /* backoff cap for an unreachable scheduler */
};

extern const struct mer_cfg_table mer_agent_cfg_table;

/* Loads a site config; err gets "file:line:column: setting: what". */
int mer_agent_cfg_load(const char *path, struct mer_agent_cfg *cfg, char *err,
		       size_t errlen);
int mer_agent_cfg_load_string(const char *name, const char *text,
			      struct mer_agent_cfg *cfg, char *err,
			      size_t errlen);
void mer_agent_cfg_free(struct mer_agent_cfg *cfg);

/* "slurm", "kubernetes", "yarn", "sim". */
const char *mer_agent_sched_name(int kind);

/*
 * The share settings of a pool: *shared 1 when the site shares it (share.
 * pools empty or naming it), its fraction and its fabric list (a JSON array,
 * borrowed, or NULL for the site's).
 */
void mer_agent_cfg_pool_share(const struct mer_agent_cfg *cfg, const char *pool,
			      int *shared, double *fraction,
			      const json_t **fabric);

#endif
