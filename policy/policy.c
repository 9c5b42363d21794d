/*
 * Policy file loader: a table of settings with bounds and defaults plus the
 * structured rules (tiers, preferences, residency, tenants, preemption).
 * It only reads and checks; policy/place.c applies the rules.
 */
#include "policy/policy.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "policy/jv.h"

static const char *const prio_keys[] = {"online", "batch", "best-effort", NULL};
static const char *const kind_keys[] = {"data-prep", "training", "inference",
					"generic", NULL};

void mer_policy_free(struct mer_policy *pol)
{
	if (!pol)
		return;
	struct mer_arena a = pol->arena;
	mer_arena_free(&a);
}

static void set_defaults(struct mer_policy *p)
{
	p->version = "builtin-default";
	p->vot_usd_hour[MER_PRIO_ONLINE] = 100;
	p->vot_usd_hour[MER_PRIO_BATCH] = 10;
	p->vot_usd_hour[MER_PRIO_BEST_EFFORT] = 0;
	p->w = (struct mer_weights){1, 1, 1, 1, 1, 1};
	p->default_duration_s[MER_KIND_DATA_PREP] = 3600;
	p->default_duration_s[MER_KIND_TRAINING] = 36000;
	p->default_duration_s[MER_KIND_INFERENCE] = 86400;
	p->default_duration_s[MER_KIND_GENERIC] = 3600;
	p->overflow_factor = 1.5;
	p->preempt[MER_PRIO_ONLINE][MER_PRIO_BEST_EFFORT] = 1;
	p->near_miss_usd_per_replica_hour = 1;
	p->pending_timeout_s = 3600;
	p->retry_limit = 3;
	p->history_prior_samples = 3;
}

/* One row per scalar setting: name, bounds, where it goes. */
struct setting {
	const char *name;
	double lo, hi;
	size_t off;
};

#define SET(n, lo, hi, field)                                                  \
	{                                                                      \
		n, lo, hi, offsetof(struct mer_policy, field)                  \
	}
static const struct setting settings[] = {
    SET("overflow_factor", 1, 1e6, overflow_factor),
    SET("preemption_penalty_usd", 0, 1e9, preemption_penalty_usd),
    SET("near_miss_usd_per_replica_hour", 0, 1e9,
	near_miss_usd_per_replica_hour),
    SET("pending_timeout_s", 0, 1e9, pending_timeout_s),
    SET("site_stale_after_s", 0, 1e9, site_stale_after_s),
    SET("history_prior_samples", 0, 1e6, history_prior_samples),
};

static int parse_selector(struct mer_jv *v, const json_t *obj, const char *path,
			  const char *key, struct mer_selector *sel)
{
	static const char *const keys[] = {"sites", "regions", "labels", NULL};
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *m = mer_jv_member(v, obj, path, key, JSON_OBJECT, 1, &rv);
	const json_t *l;

	if (!m)
		return rv;
	mer_jv_key(p, sizeof(p), path, key);
	if ((rv = mer_jv_object(v, m, p, keys)) ||
	    (rv =
		 mer_jv_strlist(v, m, p, "sites", &sel->sites, &sel->nsites)) ||
	    (rv = mer_jv_strlist(v, m, p, "regions", &sel->regions,
				 &sel->nregions)))
		return rv;
	l = mer_jv_member(v, m, p, "labels", JSON_OBJECT, 0, &rv);
	if (rv)
		return rv;
	if (l) {
		const char *k;
		json_t *val;
		mer_jv_key(q, sizeof(q), p, "labels");
		sel->labels = mer_arena_alloc(
		    v->arena, (json_object_size(l) + 1) * sizeof(*sel->labels));
		if (!sel->labels)
			return MER_ENOMEM;
		json_object_foreach ((json_t *)l, k, val) {
			char t[MER_JV_PATH_MAX];
			mer_jv_key(t, sizeof(t), q, k);
			if (!json_is_string(val))
				return mer_jv_fail(v, t, "must be a string");
			sel->labels[sel->nlabels].key =
			    mer_arena_strdup(v->arena, k);
			sel->labels[sel->nlabels].value =
			    mer_arena_strdup(v->arena, json_string_value(val));
			sel->nlabels++;
		}
	}
	if (!sel->nsites && !sel->nregions && !sel->nlabels)
		return mer_jv_fail(v, p, "must name sites, regions or labels");
	return 0;
}

static int parse_prefs(struct mer_jv *v, const json_t *root,
		       struct mer_policy *pol)
{
	static const char *const keys[] = {"match", "usd", "note", NULL};
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, root, "", "preferences", JSON_ARRAY, 0, &rv);

	if (!arr)
		return rv;
	pol->nprefs = json_array_size(arr);
	pol->prefs =
	    mer_arena_alloc(v->arena, (pol->nprefs + 1) * sizeof(*pol->prefs));
	if (!pol->prefs)
		return MER_ENOMEM;
	for (size_t i = 0; i < pol->nprefs; i++) {
		const json_t *e = json_array_get(arr, i);
		const char *note = NULL;
		snprintf(p, sizeof(p), "preferences[%zu]", i);
		if ((rv = mer_jv_object(v, e, p, keys)) ||
		    (rv = parse_selector(v, e, p, "match",
					 &pol->prefs[i].match)) ||
		    (rv = mer_jv_num(v, e, p, "usd", 1, -1e9, 1e9,
				     &pol->prefs[i].usd)) ||
		    (rv = mer_jv_str(v, e, p, "note", 0, &note)))
			return rv;
	}
	return 0;
}

static int parse_tiers(struct mer_jv *v, const json_t *root,
		       struct mer_policy *pol)
{
	static const char *const keys[] = {"name", "match", NULL};
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, root, "", "tiers", JSON_ARRAY, 0, &rv);

	if (!arr)
		return rv;
	pol->ntiers = json_array_size(arr);
	if (pol->ntiers > 16)
		return mer_jv_fail(v, "tiers", "at most 16 tiers");
	pol->tiers =
	    mer_arena_alloc(v->arena, (pol->ntiers + 1) * sizeof(*pol->tiers));
	if (!pol->tiers)
		return MER_ENOMEM;
	for (size_t i = 0; i < pol->ntiers; i++) {
		const json_t *e = json_array_get(arr, i);
		snprintf(p, sizeof(p), "tiers[%zu]", i);
		if ((rv = mer_jv_object(v, e, p, keys)) ||
		    (rv =
			 mer_jv_str(v, e, p, "name", 1, &pol->tiers[i].name)) ||
		    (rv = parse_selector(v, e, p, "match",
					 &pol->tiers[i].match)))
			return rv;
		for (size_t j = 0; j < i; j++) {
			if (strcmp(pol->tiers[j].name, pol->tiers[i].name))
				continue;
			char q[MER_JV_PATH_MAX];
			mer_jv_key(q, sizeof(q), p, "name");
			return mer_jv_fail(v, q, "duplicate tier \"%s\"",
					   pol->tiers[i].name);
		}
	}
	return 0;
}

static int parse_residency(struct mer_jv *v, const json_t *root,
			   struct mer_policy *pol)
{
	static const char *const keys[] = {"tag", "regions", NULL};
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, root, "", "residency", JSON_ARRAY, 0, &rv);

	if (!arr)
		return rv;
	pol->nresidency = json_array_size(arr);
	pol->residency = mer_arena_alloc(v->arena, (pol->nresidency + 1) *
						       sizeof(*pol->residency));
	if (!pol->residency)
		return MER_ENOMEM;
	for (size_t i = 0; i < pol->nresidency; i++) {
		struct mer_residency *r = &pol->residency[i];
		const json_t *e = json_array_get(arr, i);
		snprintf(p, sizeof(p), "residency[%zu]", i);
		if ((rv = mer_jv_object(v, e, p, keys)) ||
		    (rv = mer_jv_str(v, e, p, "tag", 1, &r->tag)) ||
		    (rv = mer_jv_strlist(v, e, p, "regions", &r->regions,
					 &r->nregions)))
			return rv;
		mer_jv_key(q, sizeof(q), p, "regions");
		if (!json_object_get(e, "regions"))
			return mer_jv_fail(v, q, "required");
		if (r->nregions == 0)
			return mer_jv_fail(v, q,
					   "must list at least one "
					   "region");
		for (size_t j = 0; j < i; j++) {
			if (strcmp(pol->residency[j].tag, r->tag) == 0) {
				mer_jv_key(q, sizeof(q), p, "tag");
				return mer_jv_fail(v, q,
						   "duplicate rule for tag "
						   "\"%s\"",
						   r->tag);
			}
		}
	}
	return 0;
}

static int parse_tenant(struct mer_jv *v, const json_t *e, const char *p,
			struct mer_tenant_policy *t)
{
	static const char *const keys[] = {"gpus", "concurrent_stages",
					   "budget_usd", NULL};
	char q[MER_JV_PATH_MAX];
	int rv;
	const json_t *g;

	t->concurrent_stages = -1;
	t->budget_usd = -1;
	if ((rv = mer_jv_object(v, e, p, keys)) ||
	    (rv = mer_jv_int(v, e, p, "concurrent_stages", 0, 0, 1000000,
			     &t->concurrent_stages)) ||
	    (rv =
		 mer_jv_num(v, e, p, "budget_usd", 0, 0, 1e12, &t->budget_usd)))
		return rv;
	g = mer_jv_member(v, e, p, "gpus", JSON_OBJECT, 0, &rv);
	if (!g)
		return rv;
	mer_jv_key(q, sizeof(q), p, "gpus");
	t->gpus = mer_arena_alloc(v->arena,
				  (json_object_size(g) + 1) * sizeof(*t->gpus));
	if (!t->gpus)
		return MER_ENOMEM;
	const char *model;
	json_t *val;
	json_object_foreach ((json_t *)g, model, val) {
		char r[MER_JV_PATH_MAX];
		mer_jv_key(r, sizeof(r), q, model);
		if (!json_is_integer(val) || json_integer_value(val) < 0)
			return mer_jv_fail(v, r,
					   "must be a non-negative integer");
		t->gpus[t->ngpus].model = mer_arena_strdup(v->arena, model);
		t->gpus[t->ngpus].gpus = (double)json_integer_value(val);
		t->ngpus++;
	}
	return 0;
}

static int parse_tenants(struct mer_jv *v, const json_t *root,
			 struct mer_policy *pol)
{
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *obj =
	    mer_jv_member(v, root, "", "tenants", JSON_OBJECT, 0, &rv);
	const char *name;
	json_t *e;

	if (!obj)
		return rv;
	pol->tenants = mer_arena_alloc(v->arena, (json_object_size(obj) + 1) *
						     sizeof(*pol->tenants));
	if (!pol->tenants)
		return MER_ENOMEM;
	json_object_foreach ((json_t *)obj, name, e) {
		struct mer_tenant_policy *t = &pol->tenants[pol->ntenants];
		mer_jv_key(p, sizeof(p), "tenants", name);
		if (strcmp(name, "*") != 0 && !mer_jv_name_ok(name))
			return mer_jv_fail(v, p, "not a valid tenant name");
		t->tenant = mer_arena_strdup(v->arena, name);
		if ((rv = parse_tenant(v, e, p, t)))
			return rv;
		pol->ntenants++;
	}
	return 0;
}

static int parse_preemption(struct mer_jv *v, const json_t *root,
			    struct mer_policy *pol)
{
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *obj =
	    mer_jv_member(v, root, "", "preemption", JSON_OBJECT, 0, &rv);

	if (!obj)
		return rv;
	/* Given, it replaces the default matrix entirely. */
	memset(pol->preempt, 0, sizeof(pol->preempt));
	if ((rv = mer_jv_object(v, obj, "preemption", prio_keys)))
		return rv;
	for (int a = 0; a < MER_PRIO_COUNT; a++) {
		char **list = NULL;
		size_t n = 0;
		if ((rv = mer_jv_strlist(v, obj, "preemption", prio_keys[a],
					 &list, &n)))
			return rv;
		mer_jv_key(p, sizeof(p), "preemption", prio_keys[a]);
		for (size_t i = 0; i < n; i++) {
			int b;
			mer_jv_idx(q, sizeof(q), p, i);
			if (mer_prio_parse(list[i], &b))
				return mer_jv_fail(v, q,
						   "must be online, batch or "
						   "best-effort");
			if (b <= a)
				return mer_jv_fail(v, q,
						   "a class may only preempt "
						   "less urgent classes");
			pol->preempt[a][b] = 1;
		}
	}
	return 0;
}

static int parse_table(struct mer_jv *v, const json_t *root, const char *key,
		       const char *const *names, double *out, size_t n,
		       double lo, double hi)
{
	int rv;
	const json_t *obj =
	    mer_jv_member(v, root, "", key, JSON_OBJECT, 0, &rv);

	if (!obj)
		return rv;
	if ((rv = mer_jv_object(v, obj, key, names)))
		return rv;
	for (size_t i = 0; i < n; i++) {
		if ((rv =
			 mer_jv_num(v, obj, key, names[i], 0, lo, hi, &out[i])))
			return rv;
	}
	return 0;
}

static int parse_weights(struct mer_jv *v, const json_t *root,
			 struct mer_policy *pol)
{
	static const char *const names[] = {
	    "compute",	  "egress", "transfer_time", "wait", "runtime",
	    "preference", NULL};
	double w[6] = {pol->w.compute, pol->w.egress,  pol->w.transfer_time,
		       pol->w.wait,    pol->w.runtime, pol->w.preference};
	int rv = parse_table(v, root, "weights", names, w, 6, 0, 1e6);

	if (rv)
		return rv;
	pol->w = (struct mer_weights){w[0], w[1], w[2], w[3], w[4], w[5]};
	return 0;
}

int mer_policy_from_json(const json_t *root, const struct mer_json_doc *doc,
			 struct mer_policy **out, char *err, size_t errlen)
{
	static const char *const keys[] = {"version",
					   "description",
					   "value_of_time_usd_per_hour",
					   "weights",
					   "default_duration_s",
					   "preferences",
					   "tiers",
					   "overflow_factor",
					   "residency",
					   "tenants",
					   "preemption",
					   "preemption_penalty_usd",
					   "near_miss_usd_per_replica_hour",
					   "pending_timeout_s",
					   "retry_limit",
					   "site_stale_after_s",
					   "history_prior_samples",
					   NULL};
	struct mer_arena arena = {0};
	struct mer_jv v = {doc, &arena, err, errlen};
	struct mer_policy *pol;
	const char *desc = NULL;
	int rv;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	pol = mer_arena_alloc(&arena, sizeof(*pol));
	if (!pol)
		return MER_ENOMEM;
	set_defaults(pol);
	if ((rv = mer_jv_object(&v, root, "", keys)) ||
	    (rv = mer_jv_str(&v, root, "", "version", 1, &pol->version)) ||
	    (rv = mer_jv_str(&v, root, "", "description", 0, &desc)) ||
	    (rv = parse_table(&v, root, "value_of_time_usd_per_hour", prio_keys,
			      pol->vot_usd_hour, MER_PRIO_COUNT, 0, 1e9)) ||
	    (rv = parse_weights(&v, root, pol)) ||
	    (rv = parse_table(&v, root, "default_duration_s", kind_keys,
			      pol->default_duration_s, MER_KIND_COUNT, 1,
			      1e9)) ||
	    (rv = parse_prefs(&v, root, pol)) ||
	    (rv = parse_tiers(&v, root, pol)) ||
	    (rv = parse_residency(&v, root, pol)) ||
	    (rv = parse_tenants(&v, root, pol)) ||
	    (rv = parse_preemption(&v, root, pol)) ||
	    (rv = mer_jv_int(&v, root, "", "retry_limit", 0, 0, 1000,
			     &pol->retry_limit)))
		goto out_fail;
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		const struct setting *s = &settings[i];
		rv = mer_jv_num(&v, root, "", s->name, 0, s->lo, s->hi,
				(double *)((char *)pol + s->off));
		if (rv)
			goto out_fail;
	}
	if (json_object_get(root, "overflow_factor") && pol->ntiers < 2) {
		rv = mer_jv_fail(&v, "overflow_factor",
				 "only means something with two or more "
				 "tiers");
		goto out_fail;
	}
	if (!pol->version[0]) {
		rv = mer_jv_fail(&v, "version", "must not be empty");
		goto out_fail;
	}
	pol->arena = arena;
	*out = pol;
	return 0;
out_fail:
	return mer_jv_abandon(&arena, rv, err, errlen);
}

static int build_policy(const json_t *root, const struct mer_json_doc *doc,
			void *out, char *err, size_t errlen)
{
	return mer_policy_from_json(root, doc, out, err, errlen);
}

int mer_policy_parse(const char *name, const char *text, size_t len,
		     struct mer_policy **out, char *err, size_t errlen)
{
	*out = NULL;
	return mer_jv_parse_doc(name, text, len, build_policy, out, err,
				errlen);
}

int mer_policy_load(const char *path, struct mer_policy **out, char *err,
		    size_t errlen)
{
	*out = NULL;
	return mer_jv_load_doc(path, build_policy, out, err, errlen);
}

int mer_policy_default(struct mer_policy **out)
{
	struct mer_arena arena = {0};
	struct mer_policy *pol = mer_arena_alloc(&arena, sizeof(*pol));

	*out = NULL;
	if (!pol)
		return MER_ENOMEM;
	set_defaults(pol);
	pol->arena = arena;
	*out = pol;
	return 0;
}

const struct mer_tenant_policy *mer_policy_tenant(const struct mer_policy *pol,
						  const char *tenant)
{
	const struct mer_tenant_policy *def = NULL;

	for (size_t i = 0; i < pol->ntenants; i++) {
		if (strcmp(pol->tenants[i].tenant, tenant) == 0)
			return &pol->tenants[i];
		if (strcmp(pol->tenants[i].tenant, "*") == 0)
			def = &pol->tenants[i];
	}
	return def;
}

static int in_list(char **list, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(list[i], s) == 0)
			return 1;
	}
	return 0;
}

int mer_selector_match(const struct mer_selector *sel,
		       const struct mer_site *site)
{
	if (sel->nsites && !in_list(sel->sites, sel->nsites, site->name))
		return 0;
	if (sel->nregions &&
	    !in_list(sel->regions, sel->nregions, site->region))
		return 0;
	for (size_t i = 0; i < sel->nlabels; i++) {
		int ok = 0;
		for (size_t j = 0; j < site->nlabels && !ok; j++)
			ok = strcmp(site->labels[j].key, sel->labels[i].key) ==
				 0 &&
			     strcmp(site->labels[j].value,
				    sel->labels[i].value) == 0;
		if (!ok)
			return 0;
	}
	return 1;
}
