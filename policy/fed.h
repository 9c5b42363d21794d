/*
 * Site snapshots and the federation (docs/SITES.md): what each site agent
 * reports (pools, resources, prices, datasets, health) and the links between
 * regions. Parsed strictly, then indexed for the placement engine (sites
 * sorted by name, regions and resource kinds interned, dataset catalog
 * sorted). Read-only once built; no I/O beyond loading a file.
 */
#ifndef MERIDIAN_POLICY_FED_H
#define MERIDIAN_POLICY_FED_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "common/json.h"
#include "policy/arena.h"
#include "policy/job.h"

#define MER_FED_MAX_SITES 100000
#define MER_FED_MAX_KINDS 64 /* cpu, memory_mb and GPU models */
#define MER_KIND_CPU 0
#define MER_KIND_MEM 1

enum mer_health {
	MER_HEALTH_HEALTHY = 0,
	MER_HEALTH_DEGRADED = 1,
	MER_HEALTH_DOWN = 2,
};

struct mer_kv {
	const char *key;
	const char *value;
};

/* One resource kind in one pool. The federation may use `usable`:
 * min(free, floor(allocatable * shared_fraction) - federation_used). */
struct mer_res {
	double total, allocatable, free, pending, federation_used;
	double preemptible[MER_PRIO_COUNT]; /* held by stages of that class */
	double usable;
	int present;
};

struct mer_pool {
	const char *name;
	double est_wait_s;
	unsigned fabric;     /* MER_FABRIC_* bits */
	struct mer_res *res; /* [fed->nkinds] */
};

struct mer_dataset {
	const char *name;
	double bytes;
	const char *path;
	char **tags;
	size_t ntags;
	uint32_t site; /* index in fed->sites */
};

struct mer_site {
	const char *name, *region, *zone, *scheduler, *fingerprint;
	struct mer_kv *labels;
	size_t nlabels;
	int health;
	int drained;
	long long last_heartbeat; /* unix seconds; 0 unknown */
	double shared_fraction;
	unsigned fabric; /* union of the pools' */
	char **storage;
	size_t nstorage;
	char **tenants_allow, **tenants_deny;
	size_t ntenants_allow, ntenants_deny;
	struct mer_pool *pools;
	size_t npools;
	double *price_hour; /* [nkinds]: per core, per MB of memory, per GPU */
	double egress_gb;   /* USD per GB leaving the site */
	double wan_gbps;    /* 0: not limited beyond the region link */
	uint32_t ridx;	    /* index of region in fed->regions */
	uint32_t cls;	    /* (region, wan) class, for joint placement */
};

/* Between two regions (the diagonal: between sites of one region). */
struct mer_link {
	double gbps;
	double egress_gb;
};

struct mer_fed {
	struct mer_arena arena;
	struct mer_site *sites; /* sorted by name */
	size_t nsites;
	char **regions; /* sorted */
	size_t nregions;
	char **kinds; /* "cpu", "memory_mb", "gpu:<model>" ... */
	size_t nkinds;
	struct mer_link *links;	      /* [nregions * nregions], from * n + to */
	struct mer_dataset *datasets; /* sorted by name, then site */
	size_t ndatasets;
	/* Sites grouped by (region, wan_gbps): costs between sites depend
	 * only on these classes and the source's egress price. */
	uint32_t *cls_region;
	double *cls_wan;
	size_t ncls;
};

/*
 * Builds a federation from {"sites": [...], "links": [...], "defaults":
 * {...}} (docs/SITES.md). doc (optional) gives file:line:column in errors.
 */
int mer_fed_from_json(const json_t *root, const struct mer_json_doc *doc,
		      struct mer_fed **out, char *err, size_t errlen);
int mer_fed_load(const char *path, struct mer_fed **out, char *err,
		 size_t errlen);
void mer_fed_free(struct mer_fed *fed);

/* Validates one site snapshot as an agent reports it (no federation). */
int mer_site_validate(const json_t *site, const struct mer_json_doc *doc,
		      char *err, size_t errlen);

/* Lookups: index or -1. */
int mer_fed_site_index(const struct mer_fed *fed, const char *name);
int mer_fed_region_index(const struct mer_fed *fed, const char *name);
int mer_fed_kind_index(const struct mer_fed *fed, const char *kind);
/* Index of the first catalog entry for a dataset name, or -1; entries for
 * one name are consecutive. */
int mer_fed_dataset_first(const struct mer_fed *fed, const char *name);

/* The link between two regions. */
static inline const struct mer_link *mer_fed_link(const struct mer_fed *fed,
						  uint32_t from, uint32_t to)
{
	return &fed->links[(size_t)from * fed->nregions + to];
}

/* Seconds to move bytes from site a to site b (0 for the same site). */
double mer_fed_transfer_s(const struct mer_fed *fed, uint32_t a, uint32_t b,
			  double bytes);
/* USD of egress to move bytes from site a to site b. */
double mer_fed_egress_usd(const struct mer_fed *fed, uint32_t a, uint32_t b,
			  double bytes);

#endif
