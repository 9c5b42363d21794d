/*
 * Site snapshot and federation loader: validates what agents report, then
 * indexes it for placement (sorted sites, interned regions and resource
 * kinds, the dataset catalog, region links and (region, WAN) classes).
 * It does not decide anything; policy/place.c does.
 */
#include "policy/fed.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "policy/jv.h"

static const char *const health_names[] = {"healthy", "degraded", "down"};
static const char *const sched_names[] = {"slurm", "kubernetes", "yarn", "sim"};

struct build {
	struct mer_jv v;
	struct mer_fed *fed;
	int single; /* validating one site: paths have no "sites[i]" */
	char **regions;
	size_t nregions;
};

void mer_fed_free(struct mer_fed *fed)
{
	if (!fed)
		return;
	struct mer_arena a = fed->arena;
	mer_arena_free(&a);
}

static int intern(struct build *b, char ***list, size_t *n, size_t *cap,
		  const char *s, size_t *idx)
{
	for (size_t i = 0; i < *n; i++) {
		if (strcmp((*list)[i], s) == 0) {
			*idx = i;
			return 0;
		}
	}
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		char **nl = mer_arena_alloc(b->v.arena, nc * sizeof(char *));
		if (!nl)
			return MER_ENOMEM;
		if (*n)
			memcpy(nl, *list, *n * sizeof(char *));
		*list = nl;
		*cap = nc;
	}
	(*list)[*n] = mer_arena_strdup(b->v.arena, s);
	if (!(*list)[*n])
		return MER_ENOMEM;
	*idx = (*n)++;
	return 0;
}

static void site_path(struct build *b, char *out, size_t n, size_t i)
{
	if (b->single)
		out[0] = '\0';
	else
		snprintf(out, n, "sites[%zu]", i);
}

/* Pass 1: the resource kinds every pool names, so each pool can hold a
 * dense array indexed by kind. */
static int collect_kinds(struct build *b, const json_t *sites)
{
	size_t cap = 0, idx;
	char sp[MER_JV_PATH_MAX], p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	struct mer_fed *fed = b->fed;

	if ((rv = intern(b, &fed->kinds, &fed->nkinds, &cap, "cpu", &idx)) ||
	    (rv =
		 intern(b, &fed->kinds, &fed->nkinds, &cap, "memory_mb", &idx)))
		return rv;
	for (size_t i = 0; i < json_array_size(sites); i++) {
		const json_t *s = json_array_get(sites, i);
		const json_t *pools = json_object_get(s, "pools");
		site_path(b, sp, sizeof(sp), i);
		if (!json_is_object(s))
			return mer_jv_fail(&b->v, sp, "must be an object");
		if (!json_is_array(pools))
			continue; /* reported in pass 2 */
		for (size_t k = 0; k < json_array_size(pools); k++) {
			const json_t *res = json_object_get(
			    json_array_get(pools, k), "resources");
			const char *key;
			json_t *val;
			if (!json_is_object(res))
				continue;
			mer_jv_key(p, sizeof(p), sp, "pools");
			mer_jv_idx(q, sizeof(q), p, k);
			mer_jv_key(p, sizeof(p), q, "resources");
			json_object_foreach ((json_t *)res, key, val) {
				int ok = strcmp(key, "cpu") == 0 ||
					 strcmp(key, "memory_mb") == 0 ||
					 (strncmp(key, "gpu:", 4) == 0 &&
					  mer_jv_name_ok(key + 4));
				if (!ok) {
					mer_jv_key(q, sizeof(q), p, key);
					return mer_jv_fail(
					    &b->v, q,
					    "unknown resource kind (cpu, "
					    "memory_mb or gpu:<model>)");
				}
				if ((rv = intern(b, &fed->kinds, &fed->nkinds,
						 &cap, key, &idx)))
					return rv;
				if (fed->nkinds > MER_FED_MAX_KINDS)
					return mer_jv_fail(&b->v, q,
							   "too many resource "
							   "kinds");
			}
		}
	}
	return 0;
}

static int parse_res(struct build *b, const json_t *r, const char *path,
		     struct mer_res *res, double share)
{
	static const char *const keys[] = {
	    "total",	       "allocatable", "free", "pending",
	    "federation_used", "preemptible", NULL};
	static const char *const prio[] = {"online", "batch", "best-effort",
					   NULL};
	struct mer_jv *v = &b->v;
	int rv;
	const json_t *pre;

	res->allocatable = -1;
	if ((rv = mer_jv_object(v, r, path, keys)) ||
	    (rv = mer_jv_num(v, r, path, "total", 1, 0, 1e15, &res->total)) ||
	    (rv = mer_jv_num(v, r, path, "allocatable", 0, 0, 1e15,
			     &res->allocatable)) ||
	    (rv = mer_jv_num(v, r, path, "free", 1, 0, 1e15, &res->free)) ||
	    (rv = mer_jv_num(v, r, path, "pending", 0, 0, 1e15,
			     &res->pending)) ||
	    (rv = mer_jv_num(v, r, path, "federation_used", 0, 0, 1e15,
			     &res->federation_used)))
		return rv;
	if (res->allocatable < 0)
		res->allocatable = res->total;
	char p[MER_JV_PATH_MAX];
	if (res->allocatable > res->total) {
		mer_jv_key(p, sizeof(p), path, "allocatable");
		return mer_jv_fail(v, p, "must not exceed total");
	}
	if (res->free > res->allocatable) {
		mer_jv_key(p, sizeof(p), path, "free");
		return mer_jv_fail(v, p, "must not exceed allocatable");
	}
	pre = mer_jv_member(v, r, path, "preemptible", JSON_OBJECT, 0, &rv);
	if (rv)
		return rv;
	if (pre) {
		mer_jv_key(p, sizeof(p), path, "preemptible");
		if ((rv = mer_jv_object(v, pre, p, prio)))
			return rv;
		for (int c = 0; c < MER_PRIO_COUNT; c++) {
			if ((rv = mer_jv_num(v, pre, p, prio[c], 0, 0, 1e15,
					     &res->preemptible[c])))
				return rv;
		}
	}
	double cap =
	    floor(res->allocatable * share + 1e-9) - res->federation_used;
	res->usable = res->free < cap ? res->free : cap;
	if (res->usable < 0)
		res->usable = 0;
	res->present = 1;
	return 0;
}

static int parse_fabric_list(struct build *b, const json_t *obj,
			     const char *path, unsigned *out)
{
	char **list = NULL;
	size_t n = 0;
	int rv = mer_jv_strlist(&b->v, obj, path, "fabric", &list, &n);

	if (rv)
		return rv;
	for (size_t i = 0; i < n; i++) {
		unsigned bit;
		if (mer_fabric_parse(list[i], &bit)) {
			char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
			mer_jv_key(p, sizeof(p), path, "fabric");
			mer_jv_idx(q, sizeof(q), p, i);
			return mer_jv_fail(&b->v, q,
					   "must be one of ib, roce, eth");
		}
		*out |= bit;
	}
	return 0;
}

static int parse_pools(struct build *b, const json_t *sj, const char *sp,
		       struct mer_site *s, unsigned site_fabric)
{
	static const char *const keys[] = {"name", "resources", "est_wait_s",
					   "fabric", NULL};
	struct mer_jv *v = &b->v;
	struct mer_fed *fed = b->fed;
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX], r[MER_JV_PATH_MAX];
	int rv;
	const json_t *pools =
	    mer_jv_member(v, sj, sp, "pools", JSON_ARRAY, 1, &rv);

	if (!pools)
		return rv;
	mer_jv_key(p, sizeof(p), sp, "pools");
	s->npools = json_array_size(pools);
	if (s->npools == 0)
		return mer_jv_fail(v, p, "must have at least one pool");
	s->pools = mer_arena_alloc(v->arena, s->npools * sizeof(*s->pools));
	if (!s->pools)
		return MER_ENOMEM;
	for (size_t k = 0; k < s->npools; k++) {
		struct mer_pool *pl = &s->pools[k];
		const json_t *pj = json_array_get(pools, k);
		const json_t *res;
		const char *key;
		json_t *val;

		mer_jv_idx(q, sizeof(q), p, k);
		if ((rv = mer_jv_object(v, pj, q, keys)) ||
		    (rv = mer_jv_str(v, pj, q, "name", 1, &pl->name)) ||
		    (rv = mer_jv_num(v, pj, q, "est_wait_s", 0, 0, 1e9,
				     &pl->est_wait_s)) ||
		    (rv = parse_fabric_list(b, pj, q, &pl->fabric)))
			return rv;
		for (size_t j = 0; j < k; j++) {
			if (strcmp(s->pools[j].name, pl->name) == 0) {
				mer_jv_key(r, sizeof(r), q, "name");
				return mer_jv_fail(
				    v, r, "duplicate pool \"%s\"", pl->name);
			}
		}
		if (!pl->fabric)
			pl->fabric = site_fabric ? site_fabric : MER_FABRIC_ETH;
		s->fabric |= pl->fabric;
		res = mer_jv_member(v, pj, q, "resources", JSON_OBJECT, 1, &rv);
		if (!res)
			return rv;
		pl->res =
		    mer_arena_alloc(v->arena, fed->nkinds * sizeof(*pl->res));
		if (!pl->res)
			return MER_ENOMEM;
		mer_jv_key(r, sizeof(r), q, "resources");
		json_object_foreach ((json_t *)res, key, val) {
			char t[MER_JV_PATH_MAX];
			int ki = mer_fed_kind_index(fed, key);
			mer_jv_key(t, sizeof(t), r, key);
			if (ki < 0)
				return mer_jv_fail(v, t, "unknown kind");
			if ((rv = parse_res(b, val, t, &pl->res[ki],
					    s->shared_fraction)))
				return rv;
		}
	}
	return 0;
}

static int parse_prices(struct build *b, const json_t *sj, const char *sp,
			struct mer_site *s)
{
	static const char *const keys[] = {"gpu_hour", "core_hour",
					   "memory_gb_hour", "egress_gb", NULL};
	struct mer_jv *v = &b->v;
	struct mer_fed *fed = b->fed;
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	double core = 0, mem = 0;
	int rv;
	const json_t *pr =
	    mer_jv_member(v, sj, sp, "prices", JSON_OBJECT, 0, &rv);
	const json_t *gpu = NULL;

	if (rv)
		return rv;
	s->price_hour = mer_arena_alloc(v->arena, fed->nkinds * sizeof(double));
	if (!s->price_hour)
		return MER_ENOMEM;
	mer_jv_key(p, sizeof(p), sp, "prices");
	if (pr) {
		if ((rv = mer_jv_object(v, pr, p, keys)) ||
		    (rv =
			 mer_jv_num(v, pr, p, "core_hour", 0, 0, 1e6, &core)) ||
		    (rv = mer_jv_num(v, pr, p, "memory_gb_hour", 0, 0, 1e6,
				     &mem)) ||
		    (rv = mer_jv_num(v, pr, p, "egress_gb", 0, 0, 1e6,
				     &s->egress_gb)))
			return rv;
		gpu = mer_jv_member(v, pr, p, "gpu_hour", JSON_OBJECT, 0, &rv);
		if (rv)
			return rv;
	}
	s->price_hour[MER_KIND_CPU] = core;
	s->price_hour[MER_KIND_MEM] = mem / 1024.0;
	mer_jv_key(q, sizeof(q), p, "gpu_hour");
	if (gpu) {
		const char *key;
		json_t *val;
		json_object_foreach ((json_t *)gpu, key, val) {
			char t[MER_JV_PATH_MAX];
			mer_jv_key(t, sizeof(t), q, key);
			if (!json_is_number(val) ||
			    json_number_value(val) < 0 ||
			    json_number_value(val) > 1e6)
				return mer_jv_fail(v, t,
						   "must be a number >= 0");
		}
	}
	for (size_t k = 2; k < fed->nkinds; k++) {
		int has = 0;
		for (size_t j = 0; j < s->npools; j++)
			has |= s->pools[j].res[k].present;
		if (!has)
			continue;
		const char *model = fed->kinds[k] + 4;
		const json_t *val = gpu ? json_object_get(gpu, model) : NULL;
		if (!val) {
			char t[MER_JV_PATH_MAX];
			mer_jv_key(t, sizeof(t), q, model);
			return mer_jv_fail(v, gpu ? t : p,
					   "needs a price: the site has %s",
					   fed->kinds[k]);
		}
		s->price_hour[k] = json_number_value(val);
	}
	return 0;
}

static int parse_datasets(struct build *b, const json_t *sj, const char *sp,
			  struct mer_dataset **out, size_t *n)
{
	static const char *const keys[] = {"name", "bytes", "path", "tags",
					   NULL};
	struct mer_jv *v = &b->v;
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, sj, sp, "datasets", JSON_ARRAY, 0, &rv);

	*n = 0;
	if (!arr)
		return rv;
	mer_jv_key(p, sizeof(p), sp, "datasets");
	*n = json_array_size(arr);
	*out = mer_arena_alloc(v->arena, (*n + 1) * sizeof(**out));
	if (!*out)
		return MER_ENOMEM;
	for (size_t i = 0; i < *n; i++) {
		struct mer_dataset *d = &(*out)[i];
		const json_t *e = json_array_get(arr, i);
		mer_jv_idx(q, sizeof(q), p, i);
		if ((rv = mer_jv_object(v, e, q, keys)) ||
		    (rv = mer_jv_str(v, e, q, "name", 1, &d->name)) ||
		    (rv =
			 mer_jv_num(v, e, q, "bytes", 1, 0, 1e18, &d->bytes)) ||
		    (rv = mer_jv_str(v, e, q, "path", 0, &d->path)) ||
		    (rv = mer_jv_strlist(v, e, q, "tags", &d->tags, &d->ntags)))
			return rv;
		char r[MER_JV_PATH_MAX];
		mer_jv_key(r, sizeof(r), q, "name");
		if (!mer_jv_name_ok(d->name))
			return mer_jv_fail(v, r, "not a valid dataset name");
		for (size_t j = 0; j < i; j++) {
			if (strcmp((*out)[j].name, d->name) == 0)
				return mer_jv_fail(
				    v, r, "duplicate dataset \"%s\"", d->name);
		}
	}
	return 0;
}

static int parse_labels(struct build *b, const json_t *sj, const char *sp,
			struct mer_site *s)
{
	struct mer_jv *v = &b->v;
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *l =
	    mer_jv_member(v, sj, sp, "labels", JSON_OBJECT, 0, &rv);
	const char *key;
	json_t *val;

	if (!l)
		return rv;
	mer_jv_key(p, sizeof(p), sp, "labels");
	s->labels = mer_arena_alloc(v->arena, (json_object_size(l) + 1) *
						  sizeof(*s->labels));
	if (!s->labels)
		return MER_ENOMEM;
	json_object_foreach ((json_t *)l, key, val) {
		mer_jv_key(q, sizeof(q), p, key);
		if (!json_is_string(val))
			return mer_jv_fail(v, q, "must be a string");
		s->labels[s->nlabels].key = mer_arena_strdup(v->arena, key);
		s->labels[s->nlabels].value =
		    mer_arena_strdup(v->arena, json_string_value(val));
		if (!s->labels[s->nlabels].key || !s->labels[s->nlabels].value)
			return MER_ENOMEM;
		s->nlabels++;
	}
	return 0;
}

static int parse_site(struct build *b, const json_t *sj, const char *sp,
		      struct mer_site *s, struct mer_dataset **ds, size_t *nds)
{
	static const char *const keys[] = {"name",
					   "region",
					   "zone",
					   "labels",
					   "scheduler",
					   "health",
					   "drained",
					   "last_heartbeat",
					   "shared_fraction",
					   "fabric",
					   "storage",
					   "pools",
					   "prices",
					   "wan_gbps",
					   "datasets",
					   "tenants",
					   "agent_fingerprint",
					   NULL};
	static const char *const ad[] = {"allow", "deny", NULL};
	struct mer_jv *v = &b->v;
	char p[MER_JV_PATH_MAX];
	unsigned site_fabric = 0;
	int sched = 0, rv;
	const json_t *t;

	s->shared_fraction = 1.0;
	if ((rv = mer_jv_object(v, sj, sp, keys)) ||
	    (rv = mer_jv_str(v, sj, sp, "name", 1, &s->name)) ||
	    (rv = mer_jv_str(v, sj, sp, "region", 1, &s->region)) ||
	    (rv = mer_jv_str(v, sj, sp, "zone", 0, &s->zone)) ||
	    (rv = parse_labels(b, sj, sp, s)) ||
	    (rv = mer_jv_enum(v, sj, sp, "scheduler", 0, sched_names, 4,
			      &sched)) ||
	    (rv = mer_jv_enum(v, sj, sp, "health", 0, health_names, 3,
			      &s->health)) ||
	    (rv = mer_jv_bool(v, sj, sp, "drained", &s->drained)) ||
	    (rv = mer_jv_int(v, sj, sp, "last_heartbeat", 0, 0, 1LL << 40,
			     &s->last_heartbeat)) ||
	    (rv = mer_jv_num(v, sj, sp, "shared_fraction", 0, 0, 1,
			     &s->shared_fraction)) ||
	    (rv = parse_fabric_list(b, sj, sp, &site_fabric)) ||
	    (rv = mer_jv_strlist(v, sj, sp, "storage", &s->storage,
				 &s->nstorage)) ||
	    (rv = mer_jv_num(v, sj, sp, "wan_gbps", 0, 0, 1e6, &s->wan_gbps)) ||
	    (rv = mer_jv_str(v, sj, sp, "agent_fingerprint", 0,
			     &s->fingerprint)))
		return rv;
	s->scheduler = sched_names[sched];
	if (!mer_jv_name_ok(s->name)) {
		mer_jv_key(p, sizeof(p), sp, "name");
		return mer_jv_fail(v, p,
				   "must be 1-63 characters of "
				   "A-Z a-z 0-9 . _ : / -");
	}
	if (!mer_jv_name_ok(s->region)) {
		mer_jv_key(p, sizeof(p), sp, "region");
		return mer_jv_fail(v, p, "not a valid region name");
	}
	t = mer_jv_member(v, sj, sp, "tenants", JSON_OBJECT, 0, &rv);
	if (rv)
		return rv;
	mer_jv_key(p, sizeof(p), sp, "tenants");
	if (t && ((rv = mer_jv_object(v, t, p, ad)) ||
		  (rv = mer_jv_strlist(v, t, p, "allow", &s->tenants_allow,
				       &s->ntenants_allow)) ||
		  (rv = mer_jv_strlist(v, t, p, "deny", &s->tenants_deny,
				       &s->ntenants_deny))))
		return rv;
	if ((rv = parse_pools(b, sj, sp, s, site_fabric)) ||
	    (rv = parse_prices(b, sj, sp, s)) ||
	    (rv = parse_datasets(b, sj, sp, ds, nds)))
		return rv;
	return 0;
}

static int parse_link(struct build *b, const json_t *l, const char *path,
		      int check_keys, struct mer_link *out)
{
	static const char *const keys[] = {"gbps", "egress_gb", NULL};
	int rv;

	if ((check_keys && (rv = mer_jv_object(&b->v, l, path, keys))) ||
	    (rv = mer_jv_num(&b->v, l, path, "gbps", 0, 1e-6, 1e6,
			     &out->gbps)) ||
	    (rv = mer_jv_num(&b->v, l, path, "egress_gb", 0, 0, 1e6,
			     &out->egress_gb)))
		return rv;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct site_tmp {
	struct mer_site site;
	struct mer_dataset *ds;
	size_t nds;
	size_t doc_index;
};

static int cmp_site_tmp(const void *a, const void *b)
{
	const struct site_tmp *x = a, *y = b;
	int c = strcmp(x->site.name, y->site.name);

	if (c)
		return c;
	return x->doc_index < y->doc_index ? -1 : x->doc_index > y->doc_index;
}

static int cmp_dataset(const void *a, const void *b)
{
	const struct mer_dataset *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	return x->site < y->site ? -1 : x->site > y->site;
}

static int parse_links(struct build *b, const json_t *root)
{
	static const char *const dkeys[] = {"intra_region", "inter_region",
					    NULL};
	static const char *const lkeys[] = {"from", "to", "gbps", "egress_gb",
					    NULL};
	struct mer_jv *v = &b->v;
	struct mer_fed *fed = b->fed;
	struct mer_link intra = {100, 0}, inter = {10, 0.02};
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *d =
	    mer_jv_member(v, root, "", "defaults", JSON_OBJECT, 0, &rv);
	const json_t *links;
	size_t nr = fed->nregions;

	if (rv)
		return rv;
	if (d) {
		const json_t *x;
		if ((rv = mer_jv_object(v, d, "defaults", dkeys)))
			return rv;
		if ((x = json_object_get(d, "intra_region")) &&
		    (rv = parse_link(b, x, "defaults.intra_region", 1, &intra)))
			return rv;
		if ((x = json_object_get(d, "inter_region")) &&
		    (rv = parse_link(b, x, "defaults.inter_region", 1, &inter)))
			return rv;
	}
	fed->links =
	    mer_arena_alloc(v->arena, nr * nr * sizeof(*fed->links) + 1);
	unsigned char *set = calloc(nr * nr + 1, 1);
	if (!fed->links || !set) {
		free(set);
		return MER_ENOMEM;
	}
	for (size_t i = 0; i < nr; i++)
		for (size_t j = 0; j < nr; j++)
			fed->links[i * nr + j] = i == j ? intra : inter;
	links = mer_jv_member(v, root, "", "links", JSON_ARRAY, 0, &rv);
	/* Two passes: a link fills the reverse direction too, unless the
	 * reverse is given explicitly (pass 2 wins). */
	for (int pass = 0; links && !rv && pass < 2; pass++) {
		for (size_t i = 0; i < json_array_size(links); i++) {
			const json_t *l = json_array_get(links, i);
			const char *from = NULL, *to = NULL;
			struct mer_link lk = inter;
			snprintf(p, sizeof(p), "links[%zu]", i);
			if ((rv = mer_jv_object(v, l, p, lkeys)) ||
			    (rv = mer_jv_str(v, l, p, "from", 1, &from)) ||
			    (rv = mer_jv_str(v, l, p, "to", 1, &to)) ||
			    (rv = parse_link(b, l, p, 0, &lk)))
				break;
			if (!json_object_get(l, "gbps")) {
				char q[MER_JV_PATH_MAX];
				mer_jv_key(q, sizeof(q), p, "gbps");
				rv = mer_jv_fail(v, q, "required");
				break;
			}
			int fi = mer_fed_region_index(fed, from);
			int ti = mer_fed_region_index(fed, to);
			if (fi < 0 || ti < 0)
				continue; /* a region without sites */
			size_t fw = (size_t)fi * nr + (size_t)ti;
			size_t bw = (size_t)ti * nr + (size_t)fi;
			if (pass == 0) {
				fed->links[bw] = lk;
				continue;
			}
			if (set[fw]) {
				rv = mer_jv_fail(
				    v, p, "duplicate link %s -> %s", from, to);
				break;
			}
			set[fw] = 1;
			fed->links[fw] = lk;
		}
	}
	free(set);
	return rv;
}

/* Groups sites by (region, wan_gbps). */
static int make_classes(struct build *b)
{
	struct mer_fed *fed = b->fed;
	size_t cap = 64;

	fed->cls_region = malloc(cap * sizeof(uint32_t));
	fed->cls_wan = malloc(cap * sizeof(double));
	if (!fed->cls_region || !fed->cls_wan)
		goto out_nomem;
	for (size_t i = 0; i < fed->nsites; i++) {
		struct mer_site *s = &fed->sites[i];
		size_t c;
		for (c = 0; c < fed->ncls; c++) {
			if (fed->cls_region[c] == s->ridx &&
			    fed->cls_wan[c] == s->wan_gbps)
				break;
		}
		if (c == fed->ncls) {
			if (c == cap) {
				cap *= 2;
				uint32_t *r = realloc(fed->cls_region,
						      cap * sizeof(uint32_t));
				if (!r)
					goto out_nomem;
				fed->cls_region = r;
				double *w =
				    realloc(fed->cls_wan, cap * sizeof(double));
				if (!w)
					goto out_nomem;
				fed->cls_wan = w;
			}
			fed->cls_region[c] = s->ridx;
			fed->cls_wan[c] = s->wan_gbps;
			fed->ncls++;
		}
		s->cls = (uint32_t)c;
	}
	/* Move the tables into the arena so the federation frees as one. */
	uint32_t *r =
	    mer_arena_alloc(b->v.arena, (fed->ncls + 1) * sizeof(uint32_t));
	double *w =
	    mer_arena_alloc(b->v.arena, (fed->ncls + 1) * sizeof(double));
	if (!r || !w)
		goto out_nomem;
	memcpy(r, fed->cls_region, fed->ncls * sizeof(uint32_t));
	memcpy(w, fed->cls_wan, fed->ncls * sizeof(double));
	free(fed->cls_region);
	free(fed->cls_wan);
	fed->cls_region = r;
	fed->cls_wan = w;
	return 0;
out_nomem:
	free(fed->cls_region);
	free(fed->cls_wan);
	fed->cls_region = NULL;
	fed->cls_wan = NULL;
	return MER_ENOMEM;
}

static int build_sites(struct build *b, const json_t *sites)
{
	struct mer_fed *fed = b->fed;
	struct mer_jv *v = &b->v;
	size_t n = json_array_size(sites), capr = 0, idx, nds = 0;
	struct site_tmp *tmp = NULL;
	char sp[MER_JV_PATH_MAX];
	int rv;

	if (n > MER_FED_MAX_SITES)
		return mer_jv_fail(v, "sites", "at most %d sites",
				   MER_FED_MAX_SITES);
	if ((rv = collect_kinds(b, sites)))
		return rv;
	tmp = calloc(n + 1, sizeof(*tmp));
	if (!tmp)
		return MER_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		site_path(b, sp, sizeof(sp), i);
		tmp[i].doc_index = i;
		rv = parse_site(b, json_array_get(sites, i), sp, &tmp[i].site,
				&tmp[i].ds, &tmp[i].nds);
		if (rv)
			goto out_free_tmp;
		if ((rv = intern(b, &b->regions, &b->nregions, &capr,
				 tmp[i].site.region, &idx)))
			goto out_free_tmp;
		nds += tmp[i].nds;
	}
	qsort(tmp, n, sizeof(*tmp), cmp_site_tmp);
	for (size_t i = 1; i < n; i++) {
		if (strcmp(tmp[i].site.name, tmp[i - 1].site.name) == 0) {
			char p[MER_JV_PATH_MAX];
			site_path(b, sp, sizeof(sp), tmp[i].doc_index);
			mer_jv_key(p, sizeof(p), sp, "name");
			rv = mer_jv_fail(v, p, "duplicate site \"%s\"",
					 tmp[i].site.name);
			goto out_free_tmp;
		}
	}
	/* Regions sorted by name, so indices do not depend on site order. */
	qsort(b->regions, b->nregions, sizeof(char *), cmp_str);
	fed->regions = b->regions;
	fed->nregions = b->nregions;
	fed->sites = mer_arena_alloc(v->arena, (n + 1) * sizeof(*fed->sites));
	fed->datasets =
	    mer_arena_alloc(v->arena, (nds + 1) * sizeof(*fed->datasets));
	if (!fed->sites || !fed->datasets) {
		rv = MER_ENOMEM;
		goto out_free_tmp;
	}
	fed->nsites = n;
	for (size_t i = 0; i < n; i++) {
		struct mer_site *s = &fed->sites[i];
		*s = tmp[i].site;
		int r = mer_fed_region_index(fed, s->region);
		s->ridx = (uint32_t)r;
		s->region = fed->regions[r];
		for (size_t k = 0; k < tmp[i].nds; k++) {
			struct mer_dataset d = tmp[i].ds[k];
			d.site = (uint32_t)i;
			fed->datasets[fed->ndatasets++] = d;
		}
	}
	qsort(fed->datasets, fed->ndatasets, sizeof(*fed->datasets),
	      cmp_dataset);
	rv = 0;
out_free_tmp:
	free(tmp);
	return rv;
}

static int build(struct build *b, const json_t *root)
{
	static const char *const keys[] = {"sites", "links", "defaults", NULL};
	struct mer_jv *v = &b->v;
	int rv;
	const json_t *sites;

	if ((rv = mer_jv_object(v, root, "", keys)))
		return rv;
	sites = mer_jv_member(v, root, "", "sites", JSON_ARRAY, 1, &rv);
	if (!sites)
		return rv;
	if ((rv = build_sites(b, sites)))
		return rv;
	if ((rv = parse_links(b, root)) || (rv = make_classes(b)))
		return rv;
	return 0;
}

static int from_json(const json_t *root, const struct mer_json_doc *doc,
		     int single, struct mer_fed **out, char *err, size_t errlen)
{
	struct mer_arena arena = {0};
	struct build b = {{doc, &arena, err, errlen}, NULL, single, NULL, 0};
	int rv;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	b.fed = mer_arena_alloc(&arena, sizeof(*b.fed));
	if (!b.fed)
		return MER_ENOMEM;
	rv = build(&b, root);
	if (rv)
		return mer_jv_abandon(&arena, rv, err, errlen);
	b.fed->arena = arena;
	*out = b.fed;
	return 0;
}

int mer_fed_from_json(const json_t *root, const struct mer_json_doc *doc,
		      struct mer_fed **out, char *err, size_t errlen)
{
	return from_json(root, doc, 0, out, err, errlen);
}

int mer_site_validate(const json_t *site, const struct mer_json_doc *doc,
		      char *err, size_t errlen)
{
	struct mer_fed *fed = NULL;
	json_t *root = json_pack("{s:[O]}", "sites", site);
	int rv;

	if (!root)
		return MER_ENOMEM;
	rv = from_json(root, doc, 1, &fed, err, errlen);
	json_decref(root);
	mer_fed_free(fed);
	return rv;
}

static int build_fed(const json_t *root, const struct mer_json_doc *doc,
		     void *out, char *err, size_t errlen)
{
	return mer_fed_from_json(root, doc, out, err, errlen);
}

int mer_fed_load(const char *path, struct mer_fed **out, char *err,
		 size_t errlen)
{
	*out = NULL;
	return mer_jv_load_doc(path, build_fed, out, err, errlen);
}

int mer_fed_site_index(const struct mer_fed *fed, const char *name)
{
	size_t lo = 0, hi = fed->nsites;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(fed->sites[mid].name, name);
		if (c == 0)
			return (int)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

int mer_fed_region_index(const struct mer_fed *fed, const char *name)
{
	size_t lo = 0, hi = fed->nregions;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(fed->regions[mid], name);
		if (c == 0)
			return (int)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

int mer_fed_kind_index(const struct mer_fed *fed, const char *kind)
{
	for (size_t i = 0; i < fed->nkinds; i++) {
		if (strcmp(fed->kinds[i], kind) == 0)
			return (int)i;
	}
	return -1;
}

int mer_fed_dataset_first(const struct mer_fed *fed, const char *name)
{
	size_t lo = 0, hi = fed->ndatasets;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(fed->datasets[mid].name, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < fed->ndatasets && strcmp(fed->datasets[lo].name, name) == 0)
		return (int)lo;
	return -1;
}

double mer_fed_transfer_s(const struct mer_fed *fed, uint32_t a, uint32_t b,
			  double bytes)
{
	const struct mer_site *x = &fed->sites[a], *y = &fed->sites[b];
	double bw;

	if (a == b || bytes <= 0)
		return 0;
	bw = mer_fed_link(fed, x->ridx, y->ridx)->gbps;
	if (x->wan_gbps > 0 && x->wan_gbps < bw)
		bw = x->wan_gbps;
	if (y->wan_gbps > 0 && y->wan_gbps < bw)
		bw = y->wan_gbps;
	return bytes * 8.0 / (bw * 1e9);
}

double mer_fed_egress_usd(const struct mer_fed *fed, uint32_t a, uint32_t b,
			  double bytes)
{
	const struct mer_site *x = &fed->sites[a], *y = &fed->sites[b];

	if (a == b || bytes <= 0)
		return 0;
	return bytes / 1e9 *
	       (x->egress_gb + mer_fed_link(fed, x->ridx, y->ridx)->egress_gb);
}
