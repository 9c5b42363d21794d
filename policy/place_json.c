/*
 * The placement engine's words: reason names and sentences, the placement
 * record as JSON, the broker's extra inputs read from JSON, and the
 * submission-time check for requests no site could ever hold. The
 * decisions themselves are made in place.c.
 */
#include "policy/place.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "policy/jv.h"

const char *mer_reason_name(int reason)
{
	switch ((enum mer_reason)reason) {
	case MER_R_OK:
		return "ok";
	case MER_R_FIXED:
		return "fixed";
	case MER_R_UNHEALTHY:
		return "unhealthy";
	case MER_R_DRAINED:
		return "drained";
	case MER_R_STALE:
		return "stale";
	case MER_R_TENANT:
		return "tenant";
	case MER_R_SITE_DENIED:
		return "site_denied";
	case MER_R_REGION_DENIED:
		return "region_denied";
	case MER_R_RESIDENCY:
		return "residency";
	case MER_R_INPUT_MISSING:
		return "input_missing";
	case MER_R_GPU_MODEL:
		return "gpu_model";
	case MER_R_FABRIC:
		return "fabric";
	case MER_R_CAPACITY:
		return "capacity";
	case MER_R_GANG:
		return "gang";
	case MER_R_QUOTA:
		return "quota";
	case MER_R_QUOTA_STAGES:
		return "quota_stages";
	case MER_R_BUDGET:
		return "budget";
	case MER_R_DEADLINE:
		return "deadline";
	case MER_R_TIER:
		return "tier";
	case MER_R_REPLICAS:
		return "replicas";
	}
	return "unknown";
}

static void join(char *buf, size_t n, char **list, size_t cnt)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < cnt && o < n; i++) {
		int w =
		    snprintf(buf + o, n - o, "%s%s", i ? ", " : "", list[i]);
		if (w < 0)
			break;
		o += (size_t)w;
	}
}

void mer_place_reason_text(const struct mer_placement *p, size_t stage,
			   const struct mer_site_eval *ev, char *buf, size_t n)
{
	const struct mer_fed *fed = p->fed;
	const struct mer_site *site = &fed->sites[ev->site];
	const struct mer_stage *st = &p->job->stages[stage];
	const char *kind = ev->kind >= 0 ? fed->kinds[ev->kind] : "resources";
	char list[200];
	int w = -1;

	switch ((enum mer_reason)ev->reason) {
	case MER_R_OK:
		w = snprintf(buf, n, "ok");
		break;
	case MER_R_FIXED:
		w = snprintf(buf, n, "fixed: the stage keeps site %s",
			     ev->aux >= 0 ? fed->sites[ev->aux].name : "?");
		break;
	case MER_R_UNHEALTHY:
		w = snprintf(buf, n, "unhealthy: site reports %s",
			     ev->aux == MER_HEALTH_DOWN ? "down" : "degraded");
		break;
	case MER_R_DRAINED:
		w = snprintf(buf, n, "drained: site takes no new stages");
		break;
	case MER_R_STALE:
		w = snprintf(buf, n,
			     "stale: last heartbeat %.0f s ago (limit %.0f s)",
			     ev->have, ev->need);
		break;
	case MER_R_TENANT:
		w = snprintf(buf, n, "tenant: site does not accept tenant %s",
			     p->job->tenant);
		break;
	case MER_R_SITE_DENIED:
		w = snprintf(buf, n,
			     "constraints: the job does not allow site %s",
			     site->name);
		break;
	case MER_R_REGION_DENIED:
		w = snprintf(buf, n,
			     "constraints: the job does not allow region %s",
			     site->region);
		break;
	case MER_R_RESIDENCY: {
		const struct mer_residency *r = &p->pol->residency[ev->aux];
		join(list, sizeof(list), r->regions, r->nregions);
		w = snprintf(buf, n,
			     "residency: data tagged %s may only be in %s; "
			     "site is in %s",
			     r->tag, list, site->region);
		break;
	}
	case MER_R_INPUT_MISSING:
		w = snprintf(buf, n,
			     "input: dataset %s has no usable replica in the "
			     "federation and no region",
			     st->inputs[ev->aux].name);
		break;
	case MER_R_GPU_MODEL:
		join(list, sizeof(list), st->gpu_models, st->ngpu_models);
		w = snprintf(buf, n, "gpu model: site has none of %s", list);
		break;
	case MER_R_FABRIC:
		w = snprintf(buf, n, "fabric: site has no %s pool",
			     mer_fabric_name(st->fabric));
		break;
	case MER_R_CAPACITY:
		w = snprintf(buf, n,
			     "capacity: needs %g %s, %g free to the "
			     "federation",
			     ev->need, kind, ev->have);
		break;
	case MER_R_GANG:
		w = snprintf(buf, n,
			     "gang: needs %g %s in one pool, the largest pool "
			     "has %g",
			     ev->need, kind, ev->have);
		break;
	case MER_R_QUOTA:
		w = snprintf(buf, n,
			     "quota: tenant %s has %g %s left, the stage "
			     "needs %g",
			     p->job->tenant, ev->have, kind, ev->need);
		break;
	case MER_R_QUOTA_STAGES:
		w = snprintf(buf, n,
			     "quota: tenant %s already has %g concurrent "
			     "stages, the limit",
			     p->job->tenant, ev->need);
		break;
	case MER_R_BUDGET:
		w = snprintf(buf, n,
			     "budget: compute alone costs %.2f USD, %.2f USD "
			     "left",
			     ev->need, ev->have);
		break;
	case MER_R_DEADLINE:
		w = snprintf(buf, n,
			     "deadline: wait and runtime end %.0f s after the "
			     "deadline",
			     ev->need);
		break;
	case MER_R_TIER:
		w = snprintf(buf, n,
			     "tier: tier %s takes the stage at %.2f per "
			     "replica; this tier (%.2f) is used only when that "
			     "is over %g times dearer",
			     ev->aux < (int32_t)p->pol->ntiers
				 ? p->pol->tiers[ev->aux].name
				 : "(untiered)",
			     ev->need, ev->have, p->pol->overflow_factor);
		break;
	case MER_R_REPLICAS:
		w = snprintf(buf, n,
			     "replicas: only %g of %g replicas fit on feasible "
			     "sites",
			     ev->have, ev->need);
		break;
	}
	if (w < 0 && n)
		buf[0] = '\0';
}

static const char *status_name(int s)
{
	switch (s) {
	case MER_STAGE_PLACED:
		return "placed";
	case MER_STAGE_PENDING:
		return "pending";
	case MER_STAGE_FIXED:
		return "fixed";
	}
	return "?";
}

/* Rounded so that JSON stays readable and byte-identical across runs. */
static json_t *num(double x)
{
	if (!isfinite(x))
		return json_null();
	return json_real(round(x * 1e4) / 1e4);
}

static json_t *eval_json(const struct mer_placement *p, size_t stage,
			 uint32_t site, int chosen)
{
	const struct mer_fed *fed = p->fed;
	json_t *o = json_object();
	struct mer_site_eval full, *ev = &full;
	char buf[512];

	if (!o)
		return NULL;
	mer_placement_eval(p, stage, site, &full);
	json_object_set_new(o, "site", json_string(fed->sites[ev->site].name));
	if (ev->reason != MER_R_OK) {
		mer_place_reason_text(p, stage, ev, buf, sizeof(buf));
		json_object_set_new(o, "reason",
				    json_string(mer_reason_name(ev->reason)));
		json_object_set_new(o, "rejected", json_string(buf));
		return o;
	}
	json_t *sc = json_object();
	json_object_set_new(sc, "compute_usd", num(ev->compute_usd));
	json_object_set_new(sc, "egress_usd", num(ev->egress_usd));
	json_object_set_new(sc, "transfer_s", num(ev->transfer_s));
	json_object_set_new(sc, "wait_s", num(ev->wait_s));
	json_object_set_new(sc, "runtime_s", num(ev->runtime_s));
	json_object_set_new(sc, "policy_usd", num(ev->policy_usd));
	if (ev->spill_usd != 0)
		json_object_set_new(sc, "spill_usd", num(ev->spill_usd));
	json_object_set_new(sc, "money_usd", num(ev->money_usd));
	json_object_set_new(sc, "total", num(ev->total));
	json_object_set_new(o, "score", sc);
	if (ev->kind >= 0)
		json_object_set_new(o, "gpu",
				    json_string(fed->kinds[ev->kind]));
	if (ev->replicas > 1)
		json_object_set_new(o, "replicas", json_integer(ev->replicas));
	if (ev->preempts)
		json_object_set_new(o, "preempts", json_true());
	if (chosen)
		json_object_set_new(o, "chosen", json_true());
	return o;
}

struct rank {
	double total;
	uint32_t site;
};

/* Lower total first, then the site first in name order. */
static int rank_before(const struct rank *x, const struct rank *y)
{
	if (x->total != y->total)
		return x->total < y->total;
	return x->site < y->site;
}

static json_t *candidates_json(const struct mer_placement *p, size_t i,
			       size_t max)
{
	const struct mer_stage_result *r = &p->stages[i];
	size_t n = p->fed->nsites;
	json_t *arr = json_array();

	if (!arr)
		return NULL;
	if (max == 0) {
		for (size_t s = 0; s < n; s++)
			json_array_append_new(arr,
					      eval_json(p, i, (uint32_t)s,
							(int32_t)s == r->site));
		return arr;
	}
	/* The best max feasible sites, kept sorted while scanning: the same
	 * as sorting them all and taking the first max, without the sort. */
	size_t keep = max < r->nfeasible ? max : r->nfeasible, nk = 0;
	struct rank *rk = calloc(keep + 1, sizeof(*rk));
	size_t nrej = 0;
	if (!rk) {
		json_decref(arr);
		return NULL;
	}
	for (size_t s = 0; s < n && keep; s++) {
		if (r->brief[s].reason != MER_R_OK)
			continue;
		struct rank c = {r->totals[s], (uint32_t)s};
		if (nk == keep && !rank_before(&c, &rk[nk - 1]))
			continue;
		size_t j = nk < keep ? nk++ : nk - 1;
		while (j > 0 && rank_before(&c, &rk[j - 1])) {
			rk[j] = rk[j - 1];
			j--;
		}
		rk[j] = c;
	}
	int chosen_listed = 0;
	for (size_t k = 0; k < nk; k++) {
		int ch = (int32_t)rk[k].site == r->site;
		chosen_listed |= ch;
		json_array_append_new(arr, eval_json(p, i, rk[k].site, ch));
	}
	if (!chosen_listed && r->site >= 0)
		json_array_append_new(arr,
				      eval_json(p, i, (uint32_t)r->site, 1));
	for (size_t s = 0; s < n && nrej < max; s++) {
		if (r->brief[s].reason == MER_R_OK)
			continue;
		json_array_append_new(arr, eval_json(p, i, (uint32_t)s, 0));
		nrej++;
	}
	free(rk);
	return arr;
}

json_t *mer_placement_to_json(const struct mer_placement *p,
			      size_t max_candidates)
{
	const struct mer_fed *fed = p->fed;
	json_t *o = json_object(), *stages = json_array();

	if (!o || !stages) {
		json_decref(o);
		json_decref(stages);
		return NULL;
	}
	json_object_set_new(o, "job", json_string(p->job->name));
	json_object_set_new(o, "tenant", json_string(p->job->tenant));
	json_object_set_new(o, "policy_version", json_string(p->pol->version));
	json_object_set_new(o, "method", json_string(p->method));
	json_object_set_new(o, "complete", json_boolean(p->complete));
	json_object_set_new(o, "total", num(p->complete ? p->total : NAN));
	json_object_set_new(o, "stage_by_stage_total",
			    num(p->complete ? p->stage_by_stage_total : NAN));
	json_object_set_new(o, "money_usd", num(p->money_usd));
	json_object_set_new(o, "makespan_s", num(p->makespan_s));
	if (p->note[0])
		json_object_set_new(o, "note", json_string(p->note));
	for (size_t i = 0; i < p->nstages; i++) {
		const struct mer_stage_result *r = &p->stages[i];
		json_t *s = json_object(), *counts = json_object();
		const size_t *cnt = r->nreason;
		json_object_set_new(s, "name",
				    json_string(p->job->stages[i].name));
		json_object_set_new(s, "status",
				    json_string(status_name(r->status)));
		json_object_set_new(s, "site",
				    r->site >= 0
					? json_string(fed->sites[r->site].name)
					: json_null());
		if (r->gpu_kind >= 0 && r->status != MER_STAGE_PENDING)
			json_object_set_new(
			    s, "gpu", json_string(fed->kinds[r->gpu_kind]));
		if (r->status != MER_STAGE_PENDING && r->nshares) {
			json_t *sh = json_array();
			for (size_t k = 0; k < r->nshares; k++)
				json_array_append_new(
				    sh,
				    json_pack(
					"{s:s,s:I,s:s}", "site",
					fed->sites[r->shares[k].site].name,
					"replicas",
					(json_int_t)r->shares[k].replicas,
					"gpu",
					r->shares[k].gpu_kind >= 0
					    ? fed->kinds[r->shares[k].gpu_kind]
					    : "none"));
			json_object_set_new(s, "replicas", sh);
		}
		if (r->preempts && r->status == MER_STAGE_PLACED)
			json_object_set_new(s, "preempts", json_true());
		json_object_set_new(s, "note", json_string(r->note));
		json_object_set_new(s, "feasible",
				    json_integer((json_int_t)r->nfeasible));
		for (int k = 1; k < MER_R_COUNT; k++)
			if (cnt[k])
				json_object_set_new(
				    counts, mer_reason_name(k),
				    json_integer((json_int_t)cnt[k]));
		json_object_set_new(s, "rejections", counts);
		json_object_set_new(s, "candidates",
				    candidates_json(p, i, max_candidates));
		json_array_append_new(stages, s);
	}
	json_object_set_new(o, "stages", stages);
	return o;
}

/* ---- extras ---- */

void mer_place_extras_free(struct mer_place_extras *x)
{
	if (!x)
		return;
	struct mer_arena a = x->arena;
	mer_arena_free(&a);
}

static int extras_usage(struct mer_jv *v, const json_t *root,
			struct mer_place_extras *x)
{
	static const char *const keys[] = {"gpus", "concurrent_stages",
					   "spent_usd", NULL};
	int rv;
	const json_t *u =
	    mer_jv_member(v, root, "", "usage", JSON_OBJECT, 0, &rv);
	const json_t *g;

	if (!u)
		return rv;
	if ((rv = mer_jv_object(v, u, "usage", keys)) ||
	    (rv = mer_jv_int(v, u, "usage", "concurrent_stages", 0, 0,
			     1000000000, &x->usage.concurrent_stages)) ||
	    (rv = mer_jv_num(v, u, "usage", "spent_usd", 0, 0, 1e15,
			     &x->usage.spent_usd)))
		return rv;
	g = mer_jv_member(v, u, "usage", "gpus", JSON_OBJECT, 0, &rv);
	if (!g)
		return rv;
	struct mer_usage_gpu *gp =
	    mer_arena_alloc(v->arena, (json_object_size(g) + 1) * sizeof(*gp));
	const char *model;
	json_t *val;
	if (!gp)
		return MER_ENOMEM;
	json_object_foreach((json_t *)g, model, val)
	{
		char p[MER_JV_PATH_MAX];
		mer_jv_key(p, sizeof(p), "usage.gpus", model);
		if (!json_is_number(val) || json_number_value(val) < 0)
			return mer_jv_fail(v, p, "must be a number >= 0");
		gp[x->usage.ngpus].model = mer_arena_strdup(v->arena, model);
		gp[x->usage.ngpus].gpus = json_number_value(val);
		x->usage.ngpus++;
	}
	x->usage.gpus = gp;
	return 0;
}

int mer_place_extras_from_json(const json_t *root,
			       const struct mer_json_doc *doc,
			       struct mer_place_extras **out, char *err,
			       size_t errlen)
{
	static const char *const keys[] = {"usage", "history", "fixed", "now",
					   NULL};
	static const char *const hkeys[] = {"site",   "key",	 "runtime_s",
					    "wait_s", "samples", NULL};
	static const char *const fkeys[] = {"stage", "site", "finished", NULL};
	struct mer_arena arena = {0};
	struct mer_jv v = {doc, &arena, err, errlen};
	struct mer_place_extras *x = mer_arena_alloc(&arena, sizeof(*x));
	char p[MER_JV_PATH_MAX];
	const json_t *arr;
	int rv;

	*out = NULL;
	if (!x)
		return MER_ENOMEM;
	if ((rv = mer_jv_object(&v, root, "", keys)) ||
	    (rv = mer_jv_int(&v, root, "", "now", 0, 0, 1LL << 40, &x->now)) ||
	    (rv = extras_usage(&v, root, x)))
		goto out_fail;
	arr = mer_jv_member(&v, root, "", "history", JSON_ARRAY, 0, &rv);
	if (rv)
		goto out_fail;
	x->nhistory = arr ? json_array_size(arr) : 0;
	x->history =
	    mer_arena_alloc(&arena, (x->nhistory + 1) * sizeof(*x->history));
	if (!x->history) {
		rv = MER_ENOMEM;
		goto out_fail;
	}
	for (size_t i = 0; i < x->nhistory; i++) {
		struct mer_history_entry *h = &x->history[i];
		const json_t *e = json_array_get(arr, i);
		h->runtime_s = -1;
		h->wait_s = -1;
		h->samples = 1;
		snprintf(p, sizeof(p), "history[%zu]", i);
		if ((rv = mer_jv_object(&v, e, p, hkeys)) ||
		    (rv = mer_jv_str(&v, e, p, "site", 1, &h->site)) ||
		    (rv = mer_jv_str(&v, e, p, "key", 1, &h->key)) ||
		    (rv = mer_jv_num(&v, e, p, "runtime_s", 0, 0, 1e9,
				     &h->runtime_s)) ||
		    (rv = mer_jv_num(&v, e, p, "wait_s", 0, 0, 1e9,
				     &h->wait_s)) ||
		    (rv = mer_jv_num(&v, e, p, "samples", 0, 1, 1e12,
				     &h->samples)))
			goto out_fail;
	}
	arr = mer_jv_member(&v, root, "", "fixed", JSON_ARRAY, 0, &rv);
	if (rv)
		goto out_fail;
	x->nfixed = arr ? json_array_size(arr) : 0;
	x->fixed = mer_arena_alloc(&arena, (x->nfixed + 1) * sizeof(*x->fixed));
	if (!x->fixed) {
		rv = MER_ENOMEM;
		goto out_fail;
	}
	for (size_t i = 0; i < x->nfixed; i++) {
		struct mer_stage_fix *f = &x->fixed[i];
		const json_t *e = json_array_get(arr, i);
		snprintf(p, sizeof(p), "fixed[%zu]", i);
		if ((rv = mer_jv_object(&v, e, p, fkeys)) ||
		    (rv = mer_jv_str(&v, e, p, "stage", 1, &f->stage)) ||
		    (rv = mer_jv_str(&v, e, p, "site", 1, &f->site)) ||
		    (rv = mer_jv_bool(&v, e, p, "finished", &f->finished)))
			goto out_fail;
	}
	x->arena = arena;
	*out = x;
	return 0;
out_fail:
	mer_arena_free(&arena);
	return rv;
}

/* ---- submission check ---- */

int mer_place_check_job(const struct mer_job *job, const struct mer_fed *fed,
			char *err, size_t errlen)
{
	for (size_t i = 0; i < job->nstages; i++) {
		const struct mer_stage *st = &job->stages[i];
		double best_gpu = 0, best_cpu = 0, best_mem = 0, units = 0;
		int any_model = st->gpu_count == 0;
		const char *best_model = NULL;
		unsigned R = st->replicas ? st->replicas : 1;

		for (size_t s = 0; s < fed->nsites; s++) {
			const struct mer_site *site = &fed->sites[s];
			size_t nm = st->gpu_count ? st->ngpu_models : 1;
			for (size_t m = 0; m < nm; m++) {
				int gk = -1;
				if (st->gpu_count) {
					char kind[80];
					snprintf(kind, sizeof(kind), "gpu:%s",
						 st->gpu_models[m]);
					gk = mer_fed_kind_index(fed, kind);
					if (gk < 0)
						continue;
				}
				double g = 0, c = 0, mem = 0, su = 0;
				for (size_t p = 0; p < site->npools; p++) {
					const struct mer_pool *pl =
					    &site->pools[p];
					if (st->fabric &&
					    !(pl->fabric & st->fabric))
						continue;
					/* The most the federation could
					 * ever get: the shared part. */
					double sh = site->shared_fraction;
					double pg =
					    gk >= 0 && pl->res[gk].present
						? floor(
						      pl->res[gk].allocatable *
							  sh +
						      1e-9)
						: 0;
					double pc = floor(
					    pl->res[MER_KIND_CPU].allocatable *
						sh +
					    1e-9);
					double pm = floor(
					    pl->res[MER_KIND_MEM].allocatable *
						sh +
					    1e-9);
					if (gk >= 0 && pg > 0)
						any_model = 1;
					double u = 1e12;
					if (gk >= 0)
						u = fmin(
						    u,
						    floor(pg / st->gpu_count +
							  1e-9));
					if (st->cpu > 0)
						u = fmin(u, floor(pc / st->cpu +
								  1e-9));
					if (st->memory_mb > 0)
						u = fmin(
						    u,
						    floor(pm / st->memory_mb +
							  1e-9));
					su += u;
					if (st->gang || R > 1) {
						g = fmax(g, pg);
						c = fmax(c, pc);
						mem = fmax(mem, pm);
					} else {
						g += pg;
						c += pc;
						mem += pm;
					}
				}
				if (g > best_gpu) {
					best_gpu = g;
					best_model =
					    gk >= 0 ? st->gpu_models[m] : NULL;
				}
				best_cpu = fmax(best_cpu, c);
				best_mem = fmax(best_mem, mem);
				units += su;
			}
		}
		if (!any_model) {
			char list[200] = "";
			size_t o = 0;
			for (size_t m = 0;
			     m < st->ngpu_models && o < sizeof(list); m++) {
				int w =
				    snprintf(list + o, sizeof(list) - o, "%s%s",
					     m ? ", " : "", st->gpu_models[m]);
				if (w < 0)
					break;
				o += (size_t)w;
			}
			snprintf(err, errlen,
				 "stages[%zu].resources.gpu: no site has any "
				 "of %s%s%s",
				 i, list, st->fabric ? " with fabric " : "",
				 st->fabric ? mer_fabric_name(st->fabric) : "");
			return MER_EINVAL;
		}
		if (st->gpu_count && best_gpu < st->gpu_count) {
			snprintf(err, errlen,
				 "stages[%zu].resources.gpu.count: %u GPUs "
				 "requested, the largest %s has %g of %s",
				 i, st->gpu_count,
				 st->gang || R > 1 ? "pool" : "site", best_gpu,
				 best_model ? best_model : st->gpu_models[0]);
			return MER_EINVAL;
		}
		if (st->cpu > best_cpu) {
			snprintf(err, errlen,
				 "stages[%zu].resources.cpu: %g cores "
				 "requested, the largest %s has %g",
				 i, st->cpu,
				 st->gang || R > 1 ? "pool" : "site", best_cpu);
			return MER_EINVAL;
		}
		if (st->memory_mb > best_mem) {
			snprintf(err, errlen,
				 "stages[%zu].resources.memory_mb: %g MB "
				 "requested, the largest %s has %g",
				 i, st->memory_mb,
				 st->gang || R > 1 ? "pool" : "site", best_mem);
			return MER_EINVAL;
		}
		if (R > 1 && units < R) {
			snprintf(err, errlen,
				 "stages[%zu].replicas: %u replicas requested, "
				 "the federation can hold at most %g",
				 i, R, units);
			return MER_EINVAL;
		}
	}
	return 0;
}
