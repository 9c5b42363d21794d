/*
 * Builds the site summary from the site config and the adapter's normalized
 * capacity: keeps only shared pools, applies per-pool share fractions,
 * attaches prices, bandwidth and the datasets that are really there. No
 * scheduler I/O here; the caller probes.
 */
#include "site-agent/summary.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"

/* nftw has no user pointer: the walk's sum lives here, guarded by the
 * agent's single summary thread (and a lock for tests running several). */
#include <pthread.h>
static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t walk_sum;
static size_t walk_count;
static size_t walk_max = 100000;

/* Directory sizes, walked at most once per TTL: a dataset of millions of
 * files must not be walked for every summary. Guarded by walk_lock. */
#define SIZE_CACHE_N 64
static long long size_ttl_s = 600;
static struct size_cache {
	char path[1024];
	uint64_t bytes;
	int rv;
	long long at; /* CLOCK_MONOTONIC seconds */
} size_cache[SIZE_CACHE_N];
static size_t size_cache_next;

void mer_agent_summary_walk_limits(size_t max_entries, long long ttl_s)
{
	pthread_mutex_lock(&walk_lock);
	walk_max = max_entries;
	size_ttl_s = ttl_s;
	memset(size_cache, 0, sizeof(size_cache));
	pthread_mutex_unlock(&walk_lock);
}

static int walk_add(const char *p, const struct stat *sb, int type,
		    struct FTW *f)
{
	(void)p;
	(void)f;
	if (type == FTW_F)
		walk_sum += (uint64_t)sb->st_size;
	if (++walk_count > walk_max)
		return 1;
	return 0;
}

int mer_agent_path_size(const char *path, uint64_t *bytes, char *err,
			size_t errlen)
{
	struct stat sb;
	int rv;

	if (stat(path, &sb) != 0) {
		snprintf(err, errlen, "%s", strerror(errno));
		return errno == ENOENT || errno == ENOTDIR ? MER_ENOTFOUND
							   : MER_EIO;
	}
	if (!S_ISDIR(sb.st_mode)) {
		*bytes = (uint64_t)sb.st_size;
		return 0;
	}
	pthread_mutex_lock(&walk_lock);
	walk_sum = 0;
	walk_count = 0;
	rv = nftw(path, walk_add, 16, FTW_PHYS);
	*bytes = walk_sum;
	size_t max = walk_max;
	pthread_mutex_unlock(&walk_lock);
	if (rv < 0) {
		snprintf(err, errlen, "cannot read: %s", strerror(errno));
		return MER_EIO;
	}
	if (rv > 0) {
		snprintf(err, errlen, "more than %zu entries", max);
		return MER_ETOOBIG;
	}
	return 0;
}

static long long mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec;
}

/* mer_agent_path_size with the walk of a directory cached for the TTL;
 * existence is checked (stat) on every call. */
static int cached_size(const char *path, uint64_t *bytes, char *err,
		       size_t errlen)
{
	struct stat sb;
	long long now = mono_s();
	struct size_cache *c = NULL;
	int rv;

	if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
		return mer_agent_path_size(path, bytes, err, errlen);
	pthread_mutex_lock(&walk_lock);
	for (size_t i = 0; i < SIZE_CACHE_N; i++) {
		if (size_cache[i].path[0] &&
		    strcmp(size_cache[i].path, path) == 0 &&
		    now - size_cache[i].at < size_ttl_s) {
			*bytes = size_cache[i].bytes;
			rv = size_cache[i].rv;
			pthread_mutex_unlock(&walk_lock);
			if (rv == MER_ETOOBIG)
				snprintf(err, errlen, "too many entries");
			return rv;
		}
	}
	pthread_mutex_unlock(&walk_lock);
	rv = mer_agent_path_size(path, bytes, err, errlen);
	if (rv && rv != MER_ETOOBIG)
		return rv;
	pthread_mutex_lock(&walk_lock);
	for (size_t i = 0; i < SIZE_CACHE_N && !c; i++)
		if (strcmp(size_cache[i].path, path) == 0)
			c = &size_cache[i];
	if (!c)
		c = &size_cache[size_cache_next++ % SIZE_CACHE_N];
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->bytes = *bytes;
	c->rv = rv;
	c->at = now;
	pthread_mutex_unlock(&walk_lock);
	return rv;
}

static json_t *strlist_json(const struct mer_strlist *l)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < l->n; i++) {
		if (json_array_append_new(a, json_string(l->v[i]))) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

static double used_of(const struct mer_agent_capacity *used, const char *pool,
		      const char *kind)
{
	if (!used)
		return 0;
	for (size_t i = 0; i < used->npools; i++) {
		if (strcmp(used->pools[i].name, pool) == 0) {
			const struct mer_agent_res *r =
			    mer_agent_pool_find(&used->pools[i], kind);
			return r ? r->total : 0;
		}
	}
	return 0;
}

/* A resource as fed.c wants it, with the pool's own share applied: fed.c
 * knows one fraction per site (the largest of the pools'), so a pool
 * offered less gets its allocatable cut to match. */
static json_t *res_json(const struct mer_agent_res *r, double frac,
			double site_frac, double fed_used)
{
	double total = r->total, alloc = r->allocatable, free_ = r->free;

	if (alloc > total)
		alloc = total;
	if (free_ > alloc)
		free_ = alloc;
	if (free_ < 0)
		free_ = 0;
	if (site_frac > 0 && frac < site_frac) {
		alloc = floor(alloc * frac / site_frac + 1e-9);
		if (free_ > alloc)
			free_ = alloc;
	}
	return json_pack("{s:f, s:f, s:f, s:f, s:f}", "total", total,
			 "allocatable", alloc, "free", free_, "pending",
			 r->pending < 0 ? 0.0 : r->pending, "federation_used",
			 fed_used);
}

static int add_pools(const struct mer_agent_cfg *cfg,
		     const struct mer_agent_summary_in *in, json_t *site,
		     json_t *status)
{
	json_t *pools = json_array(), *unpriced = json_array();
	double site_frac = 0;
	const struct mer_agent_capacity *cap = in->cap;
	int rv = MER_ENOMEM;

	if (!pools || !unpriced)
		goto out_free_pools;
	/* The site fraction is the largest fraction of a shared pool. */
	for (size_t i = 0; cap && i < cap->npools; i++) {
		int shared;
		double f;
		const json_t *fab;
		mer_agent_cfg_pool_share(cfg, cap->pools[i].name, &shared, &f,
					 &fab);
		if (shared && f > site_frac)
			site_frac = f;
	}
	if (!cap || cap->npools == 0)
		site_frac = cfg->share_fraction;
	for (size_t i = 0; cap && i < cap->npools; i++) {
		const struct mer_agent_pool *p = &cap->pools[i];
		int shared;
		double f;
		const json_t *fab;
		json_t *pj, *res;

		mer_agent_cfg_pool_share(cfg, p->name, &shared, &f, &fab);
		if (!shared)
			continue;
		res = json_object();
		pj = json_pack("{s:s, s:o, s:f}", "name", p->name, "resources",
			       res, "est_wait_s",
			       p->est_wait_s < 0 ? 0.0 : p->est_wait_s);
		if (!pj || json_array_append_new(pools, pj))
			goto out_free_pools;
		if (fab && json_object_set(pj, "fabric", (json_t *)fab))
			goto out_free_pools;
		for (size_t k = 0; k < p->nres; k++) {
			const struct mer_agent_res *r = &p->res[k];
			json_t *rj;
			if (strncmp(r->kind, "gpu:", 4) == 0 &&
			    !json_object_get(cfg->gpu_hour, r->kind + 4)) {
				/* fed.c refuses a GPU without a price, and
				 * an unpriced GPU should not be sold. */
				if (json_array_append_new(
					unpriced, json_sprintf("%s/%s", p->name,
							       r->kind)))
					goto out_free_pools;
				continue;
			}
			rj = res_json(r, f, site_frac,
				      used_of(in->fed_used, p->name, r->kind));
			if (!rj || json_object_set_new(res, r->kind, rj))
				goto out_free_pools;
		}
	}
	if (json_array_size(pools) == 0) {
		/* fed.c wants one pool at least: before the first probe (or
		 * when nothing is shared) report an empty one, which offers
		 * nothing. */
		const char *name = "default";
		json_t *e = json_array_get(cfg->share_pools, 0);
		if (json_is_string(e))
			name = json_string_value(e);
		else if (json_is_object(e))
			name = json_string_value(json_object_get(e, "name"));
		if (json_array_append_new(
			pools,
			json_pack("{s:s, s:{}}", "name", name, "resources")))
			goto out_free_pools;
	}
	if (json_object_set_new(site, "shared_fraction",
				json_real(site_frac)) ||
	    json_object_set(site, "pools", pools))
		goto out_free_pools;
	if (json_array_size(unpriced) &&
	    json_object_set(status, "unpriced_gpus", unpriced))
		goto out_free_pools;
	if (json_array_size(unpriced))
		mer_warn("gpus without a price are not offered", "site=%s",
			 cfg->name);
	rv = 0;
out_free_pools:
	json_decref(pools);
	json_decref(unpriced);
	return rv;
}

static int add_datasets(const struct mer_agent_cfg *cfg, json_t *site,
			json_t *status)
{
	json_t *ds = json_array(), *missing = json_array();
	json_t *unverified = json_array();
	size_t i;
	json_t *e;
	int rv = MER_ENOMEM;

	if (!ds || !missing || !unverified)
		goto out_free_lists;
	json_array_foreach (cfg->datasets, i, e) {
		const char *name =
		    json_string_value(json_object_get(e, "name"));
		const char *path =
		    json_string_value(json_object_get(e, "path"));
		json_t *tags = json_object_get(e, "tags");
		json_int_t bytes =
		    json_integer_value(json_object_get(e, "bytes"));
		json_t *d;

		if (path[0] == '/') {
			uint64_t sz = 0;
			char why[256] = "";
			int r = cached_size(path, &sz, why, sizeof(why));
			if (r == MER_ETOOBIG) {
				/* There, but too big to count: the configured
				 * size stands, and status says so. */
				if (json_array_append_new(
					unverified,
					json_pack("{s:s, s:s, s:s}", "name",
						  name, "path", path, "reason",
						  "size not verified: too many "
						  "entries")))
					goto out_free_lists;
				sz = (uint64_t)bytes;
				r = 0;
			}
			if (r) {
				/* Never reported as present: the broker
				 * would send work to data that is not here. */
				if (json_array_append_new(
					missing,
					json_pack("{s:s, s:s, s:s}", "name",
						  name, "path", path, "reason",
						  why)))
					goto out_free_lists;
				mer_warn("dataset missing",
					 "site=%s dataset=%s path=%s reason=%s",
					 cfg->name, name, path, why);
				continue;
			}
			bytes = (json_int_t)sz;
		}
		d = json_pack("{s:s, s:I, s:s}", "name", name, "bytes",
			      (json_int_t)bytes, "path", path);
		if (!d || json_array_append_new(ds, d))
			goto out_free_lists;
		if (tags && json_object_set(d, "tags", tags))
			goto out_free_lists;
	}
	if (json_object_set(site, "datasets", ds) ||
	    json_object_set(status, "datasets_missing", missing))
		goto out_free_lists;
	if (json_array_size(unverified) &&
	    json_object_set(status, "datasets_unverified", unverified))
		goto out_free_lists;
	rv = 0;
out_free_lists:
	json_decref(ds);
	json_decref(missing);
	json_decref(unverified);
	return rv;
}

int mer_agent_summary_build(const struct mer_agent_cfg *cfg,
			    const struct mer_agent_summary_in *in, json_t **out)
{
	json_t *site = NULL, *status = NULL, *prices = NULL, *root = NULL;
	const char *why = in->unhealthy_reason;
	int unhealthy = why && *why;
	int64_t now = in->now ? in->now : (int64_t)time(NULL);
	int rv = MER_ENOMEM;

	*out = NULL;
	site = json_pack(
	    "{s:s, s:s, s:s, s:O, s:s, s:s, s:I}", "name", cfg->name, "region",
	    cfg->region, "zone", cfg->zone ? cfg->zone : "", "labels",
	    cfg->labels, "scheduler", mer_agent_sched_name(cfg->kind), "health",
	    unhealthy ? "down" : "healthy", "last_heartbeat", (json_int_t)now);
	status =
	    json_pack("{s:s, s:s}", "health_reason", unhealthy ? why : "",
		      "scheduler_version", in->cap ? in->cap->version : "");
	prices = json_pack("{s:O, s:f, s:f, s:f}", "gpu_hour", cfg->gpu_hour,
			   "core_hour", cfg->core_hour, "memory_gb_hour",
			   cfg->memory_gb_hour, "egress_gb", cfg->egress_gb);
	if (!site || !status || !prices)
		goto out_free_parts;
	if (json_object_set_new(site, "fabric", strlist_json(&cfg->fabric)) ||
	    json_object_set_new(site, "storage", strlist_json(&cfg->storage)) ||
	    json_object_set(site, "prices", prices) ||
	    json_object_set_new(site, "wan_gbps", json_real(cfg->wan_gbps)))
		goto out_free_parts;
	if (in->fingerprint && *in->fingerprint &&
	    json_object_set_new(site, "agent_fingerprint",
				json_string(in->fingerprint)))
		goto out_free_parts;
	if ((rv = add_pools(cfg, in, site, status)) ||
	    (rv = add_datasets(cfg, site, status)))
		goto out_free_parts;
	rv = MER_ENOMEM;
	root = json_pack("{s:O, s:O}", "site", site, "status", status);
	if (!root)
		goto out_free_parts;
	*out = root;
	rv = 0;
out_free_parts:
	json_decref(site);
	json_decref(status);
	json_decref(prices);
	return rv;
}
