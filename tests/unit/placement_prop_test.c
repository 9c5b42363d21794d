/*
 * Property tests over generated federations and jobs (fixed seeds, so every
 * run sees the same cases): placements never break residency, capacity or
 * quota; the joint plan never costs more than stage by stage and, on small
 * forests, equals the brute-force optimum; the same input gives the same
 * output.
 */
#include "common/err.h"
#include "common/json.h"
#include "policy/place.h"
#include "tests/harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long rng_state;

static unsigned rnd(unsigned n)
{
	/* xorshift64*: small, fast and the same everywhere */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (unsigned)((rng_state * 2685821657736338717ULL) >> 33) % n;
}

static const char *const models[] = {"a100", "a800", "h800"};
static const char *const tags[] = {"pii", "gdpr", "open"};

static json_t *gen_fed(unsigned nsites, unsigned nregions)
{
	json_t *sites = json_array(), *links = json_array();
	char name[32], reg[32];

	for (unsigned s = 0; s < nsites; s++) {
		json_t *res = json_object(), *pools = json_array();
		json_t *gh = json_object(), *ds = json_array();
		unsigned np = 1 + rnd(2);
		snprintf(name, sizeof(name), "s%02u", s);
		snprintf(reg, sizeof(reg), "r%u", rnd(nregions));
		for (unsigned p = 0; p < np; p++) {
			json_t *r = json_object();
			unsigned m = rnd(3), tot = 8 * (1 + rnd(4));
			unsigned fr = rnd(tot + 1);
			char kind[32], pn[8];
			snprintf(kind, sizeof(kind), "gpu:%s", models[m]);
			json_object_set_new(r, "cpu",
					    json_pack("{s:i,s:i}", "total", 256,
						      "free", 32 + rnd(200)));
			json_object_set_new(
			    r, kind,
			    json_pack("{s:i,s:i,s:{s:i}}", "total", tot, "free",
				      fr, "preemptible", "best-effort",
				      rnd(tot - fr + 1)));
			snprintf(pn, sizeof(pn), "p%u", p);
			json_array_append_new(
			    pools,
			    json_pack("{s:s,s:o,s:i,s:[s]}", "name", pn,
				      "resources", r, "est_wait_s", rnd(3600),
				      "fabric", rnd(2) ? "ib" : "eth"));
			json_object_set_new(gh, models[m],
					    json_real(0.5 + rnd(30) / 10.0));
		}
		(void)res;
		json_decref(res);
		for (unsigned d = 0; d < 3; d++) {
			if (rnd(3))
				continue;
			char dn[16];
			snprintf(dn, sizeof(dn), "ds%u", d);
			json_array_append_new(
			    ds,
			    json_pack("{s:s,s:f,s:[s]}", "name", dn, "bytes",
				      (double)(1 + rnd(2000)) * 1e9, "tags",
				      tags[d]));
		}
		json_array_append_new(
		    sites,
		    json_pack(
			"{s:s,s:s,s:s,s:b,s:o,s:{s:o,s:f,s:f},"
			"s:f,s:o,s:{s:s}}",
			"name", name, "region", reg, "health",
			rnd(10) ? "healthy" : "down", "drained", rnd(12) == 0,
			"pools", pools, "prices", "gpu_hour", gh, "core_hour",
			0.01 * (1 + rnd(3)), "egress_gb", 0.01 * rnd(10),
			"wan_gbps", (double)(rnd(2) ? 10 : 5), "datasets", ds,
			"labels", "provider", rnd(2) ? "onprem" : "cloud"));
	}
	for (unsigned a = 0; a < nregions; a++)
		for (unsigned b = a + 1; b < nregions; b++) {
			char ra[16], rb[16];
			if (rnd(2))
				continue;
			snprintf(ra, sizeof(ra), "r%u", a);
			snprintf(rb, sizeof(rb), "r%u", b);
			json_array_append_new(
			    links,
			    json_pack("{s:s,s:s,s:f,s:f}", "from", ra, "to", rb,
				      "gbps", (double)(1 + rnd(20)),
				      "egress_gb", 0.01 * rnd(10)));
		}
	return json_pack("{s:o,s:o}", "sites", sites, "links", links);
}

static json_t *gen_policy(unsigned nregions)
{
	json_t *res = json_array();
	char r[16];

	for (unsigned t = 0; t < 2; t++) {
		json_t *regs = json_array();
		for (unsigned k = 0; k < nregions; k++) {
			if (rnd(2))
				continue;
			snprintf(r, sizeof(r), "r%u", k);
			json_array_append_new(regs, json_string(r));
		}
		if (json_array_size(regs) == 0)
			json_array_append_new(regs, json_string("r0"));
		json_array_append_new(res, json_pack("{s:s,s:o}", "tag",
						     tags[t], "regions", regs));
	}
	json_t *p = json_pack(
	    "{s:s,s:{s:f,s:f,s:f},s:o,s:{s:{s:{s:i,s:i},s:i}},"
	    "s:{s:[s]}}",
	    "version", "prop", "value_of_time_usd_per_hour", "online",
	    (double)rnd(500), "batch", (double)rnd(50), "best-effort", 0.0,
	    "residency", res, "tenants", "t", "gpus", "a100", 8 + 8 * rnd(4),
	    "h800", 8 + 8 * rnd(4), "concurrent_stages", 50, "preemption",
	    "online", "best-effort");
	if (rnd(2)) {
		json_object_set_new(
		    p, "tiers",
		    json_pack("[{s:s,s:{s:{s:s}}},{s:s,s:{s:{s:s}}}]", "name",
			      "a", "match", "labels", "provider", "onprem",
			      "name", "b", "match", "labels", "provider",
			      "cloud"));
		json_object_set_new(p, "overflow_factor",
				    json_real(1 + rnd(3)));
	}
	return p;
}

/* Shapes: chain, tree (fan-out), diamond, independent. */
static json_t *gen_job(unsigned id, int allow_replicas)
{
	unsigned ns = 1 + rnd(4), shape = rnd(4);
	json_t *stages = json_array();
	char name[16], out[16], jn[16];
	static const char *const prios[] = {"online", "batch", "best-effort"};

	for (unsigned i = 0; i < ns; i++) {
		json_t *after = json_array(), *inputs = json_array();
		unsigned gpus = 1 + rnd(16);
		snprintf(name, sizeof(name), "st%u", i);
		snprintf(out, sizeof(out), "o%u", i);
		if (i > 0) {
			unsigned dep = shape == 0   ? i - 1
				       : shape == 1 ? 0
				       : shape == 2
					   ? (i == ns - 1 && ns > 2 ? i - 1 : 0)
					   : i;
			if (dep != i) {
				char dn[16], dout[16];
				snprintf(dn, sizeof(dn), "st%u", dep);
				snprintf(dout, sizeof(dout), "o%u", dep);
				json_array_append_new(after, json_string(dn));
				json_array_append_new(
				    inputs, json_pack("{s:s}", "name", dout));
				if (shape == 2 && i == ns - 1 && ns > 3) {
					json_array_append_new(
					    after, json_string("st1"));
					json_array_append_new(
					    inputs,
					    json_pack("{s:s}", "name", "o1"));
				}
			}
		}
		if (rnd(2)) {
			char dn[16];
			snprintf(dn, sizeof(dn), "ds%u", rnd(3));
			json_array_append_new(inputs,
					      json_pack("{s:s}", "name", dn));
		}
		int inf = allow_replicas && i == ns - 1 && rnd(2);
		json_t *st = json_pack(
		    "{s:s,s:s,s:o,s:{s:i,s:{s:i,s:[s,s]}},s:o,"
		    "s:[{s:s,s:f}],s:f,s:b}",
		    "name", name, "kind", inf ? "inference" : "training",
		    "after", after, "resources", "cpu", 1 + rnd(16), "gpu",
		    "count", gpus, "models", models[rnd(3)],
		    models[rnd(3)] == models[0] ? "h800" : "a100", "inputs",
		    inputs, "outputs", "name", out, "bytes",
		    (double)rnd(500) * 1e9, "duration_s",
		    (double)(600 + rnd(36000)), "gang", rnd(3) == 0);
		json_t *ml = json_object_get(
		    json_object_get(json_object_get(st, "resources"), "gpu"),
		    "models");
		if (strcmp(json_string_value(json_array_get(ml, 0)),
			   json_string_value(json_array_get(ml, 1))) == 0)
			json_array_remove(ml, 1);
		if (inf) {
			json_object_set_new(st, "replicas",
					    json_integer(1 + rnd(4)));
			json_object_set_new(st, "near", json_pack("[s]", "r0"));
		}
		json_array_append_new(stages, st);
	}
	snprintf(jn, sizeof(jn), "job%u", id);
	return json_pack("{s:s,s:s,s:s,s:o}", "name", jn, "tenant", "t",
			 "priority", prios[rnd(3)], "stages", stages);
}

/* The residency tags a stage carries: its inputs' (catalog and given),
 * its producers' tags and its outputs'. */
static int stage_has_tag(const struct mer_fed *fed, const struct mer_job *job,
			 size_t i, const char *tag)
{
	const struct mer_stage *st = &job->stages[i];

	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		if (in->producer >= 0) {
			if (stage_has_tag(fed, job, (size_t)in->producer, tag))
				return 1;
			continue;
		}
		for (size_t d = 0; d < fed->ndatasets; d++) {
			if (strcmp(fed->datasets[d].name, in->name))
				continue;
			for (size_t t = 0; t < fed->datasets[d].ntags; t++)
				if (!strcmp(fed->datasets[d].tags[t], tag))
					return 1;
		}
	}
	return 0;
}

static int region_allowed(const struct mer_policy *pol,
			  const struct mer_fed *fed, const struct mer_job *job,
			  size_t i, const struct mer_site *site)
{
	for (size_t r = 0; r < pol->nresidency; r++) {
		if (!stage_has_tag(fed, job, i, pol->residency[r].tag))
			continue;
		int ok = 0;
		for (size_t k = 0; k < pol->residency[r].nregions; k++)
			ok |=
			    !strcmp(pol->residency[r].regions[k], site->region);
		if (!ok)
			return 0;
	}
	return 1;
}

static double pre_left(const struct mer_fed *fed, const double *pre,
		       size_t site, int c, int k)
{
	return pre[(site * MER_PRIO_COUNT + (size_t)c) * fed->nkinds +
		   (size_t)k];
}

static void take(const struct mer_fed *fed, const struct mer_policy *pol,
		 int prio, double *cap, double *pre, size_t site, int k,
		 double amount)
{
	double *c0 = &cap[site * fed->nkinds + (size_t)k];
	double from = fmin(*c0, amount);

	*c0 -= from;
	amount -= from;
	for (int c = MER_PRIO_COUNT - 1; c >= 0 && amount > 0; c--) {
		if (!pol->preempt[prio][c])
			continue;
		double *p =
		    &pre[(site * MER_PRIO_COUNT + (size_t)c) * fed->nkinds +
			 (size_t)k];
		double f = fmin(*p, amount);
		*p -= f;
		amount -= f;
	}
}

/* before[i] bit j: stage j ends before stage i starts (an ancestor). */
static void ancestors(const struct mer_job *job, unsigned *before)
{
	for (size_t q = 0; q < job->nstages; q++) {
		size_t i = job->topo[q];
		before[i] = 0;
		for (size_t k = 0; k < job->stages[i].nafter; k++) {
			size_t d = job->stages[i].deps[k];
			before[i] |= (1u << d) | before[d];
		}
	}
}

/*
 * Written apart from the engine: every set of mutually concurrent stages of
 * one job (no stage of it is an ancestor of another) that the assignment
 * a puts on one site must fit that site's totals left in the round (left:
 * free, pre: preemptible), GPUs and cores. shares NULL: one replica each
 * at a[i]; else the placement's shares. 1 when some set does not fit.
 */
static int over_commits(const struct mer_placement *pl, const uint32_t *a,
			int use_shares, const double *left, const double *pre)
{
	const struct mer_fed *fed = pl->fed;
	const struct mer_job *job = pl->job;
	size_t ns = pl->nstages, nk = fed->nkinds;
	unsigned before[8];

	ancestors(job, before);
	for (unsigned set = 1; set < (1u << ns); set++) {
		int anti = (set & (set - 1)) != 0;
		for (size_t i = 0; i < ns && anti; i++)
			if ((set & (1u << i)) && (before[i] & set))
				anti = 0;
		if (!anti)
			continue;
		for (size_t s = 0; s < fed->nsites; s++) {
			double need[64] = {0};
			int here = 0;
			for (size_t i = 0; i < ns; i++) {
				const struct mer_stage_result *r =
				    &pl->stages[i];
				const struct mer_stage *st = &job->stages[i];
				if (!(set & (1u << i)) ||
				    r->status == MER_STAGE_FIXED)
					continue;
				size_t nsh = use_shares ? r->nshares : 1;
				for (size_t k = 0; k < nsh; k++) {
					uint32_t site = use_shares
							    ? r->shares[k].site
							    : a[i];
					int gk = use_shares
						     ? r->shares[k].gpu_kind
						     : r->brief[a[i]].kind;
					double rep = use_shares
							 ? r->shares[k].replicas
							 : 1;
					if (site != s)
						continue;
					here++;
					if (gk >= 0 && (size_t)gk < 64)
						need[gk] += st->gpu_count * rep;
					need[MER_KIND_CPU] += st->cpu * rep;
				}
			}
			if (here < 2)
				continue;
			for (size_t k = 0; k < nk && k < 64; k++) {
				double have = left[s * nk + k];
				for (int c = 0; c < MER_PRIO_COUNT; c++)
					if (pl->pol->preempt[job->priority][c])
						have += pre_left(fed, pre, s, c,
								 (int)k);
				if (need[k] > have + 1e-9)
					return 1;
			}
		}
	}
	return 0;
}

/* 1 when two stages of a that may run at once share a site. */
static int shares_a_site(const struct mer_placement *pl, const uint32_t *a)
{
	unsigned before[8];

	ancestors(pl->job, before);
	for (size_t i = 0; i < pl->nstages; i++)
		for (size_t j = i + 1; j < pl->nstages; j++)
			if (a[i] == a[j] && !(before[i] & (1u << j)) &&
			    !(before[j] & (1u << i)))
				return 1;
	return 0;
}

/* Objective of an arbitrary assignment, rebuilt from the explanation: each
 * feasible site's total minus the transfer terms from the chosen
 * producers, plus the transfer terms of the given assignment. */
static double inbound(const struct mer_placement *pl, size_t i,
		      const uint32_t *a, uint32_t s)
{
	const struct mer_stage *st = &pl->job->stages[i];
	double vot = pl->pol->vot_usd_hour[pl->job->priority] / 3600, t = 0;

	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		if (in->producer < 0)
			continue;
		double b =
		    pl->job->stages[in->producer].outputs[in->output].bytes;
		t += pl->pol->w.egress *
			 mer_fed_egress_usd(pl->fed, a[in->producer], s, b) +
		     vot * pl->pol->w.transfer_time *
			 mer_fed_transfer_s(pl->fed, a[in->producer], s, b);
	}
	return t;
}

/* The least objective over every assignment (*free_best, its plan in
 * free_arg), and over those that do not over-commit (returned). */
static double brute(const struct mer_placement *pl, uint32_t *chosen,
		    const double *left, const double *pre, double *free_best,
		    uint32_t *free_arg)
{
	size_t ns = pl->nstages, n = pl->fed->nsites;
	uint32_t a[8] = {0};
	double best = INFINITY;

	*free_best = INFINITY;

	for (size_t i = 0; i < ns; i++)
		chosen[i] = (uint32_t)pl->stages[i].site;
	for (;;) {
		double t = 0;
		int ok = 1;
		for (size_t i = 0; i < ns && ok; i++) {
			struct mer_site_eval full;
			const struct mer_site_eval *ev = &full;
			mer_placement_eval(pl, i, a[i], &full);
			if (ev->reason != MER_R_OK) {
				ok = 0;
				break;
			}
			t += ev->total - inbound(pl, i, chosen, a[i]) +
			     inbound(pl, i, a, a[i]);
		}
		if (ok && t < *free_best) {
			*free_best = t;
			memcpy(free_arg, a, ns * sizeof(uint32_t));
		}
		if (ok && t < best && !over_commits(pl, a, 0, left, pre))
			best = t;
		size_t k = 0;
		while (k < ns && ++a[k] == n)
			a[k++] = 0;
		if (k == ns)
			break;
	}
	return best;
}

static int forest(const struct mer_job *job)
{
	size_t ns = job->nstages, edges = 0, par[8];
	for (size_t i = 0; i < ns; i++)
		par[i] = i;
	for (size_t i = 0; i < ns; i++) {
		const struct mer_stage *st = &job->stages[i];
		int seen[8] = {0};
		for (size_t k = 0; k < st->ninputs; k++) {
			int p = st->inputs[k].producer;
			if (p < 0 || seen[p])
				continue;
			seen[p] = 1;
			size_t x = (size_t)p, y = i;
			while (par[x] != x)
				x = par[x];
			while (par[y] != y)
				y = par[y];
			if (x == y)
				return 0;
			par[x] = y;
			edges++;
		}
	}
	return 1;
}

struct stats {
	unsigned cases, complete, brute_checked, pending, brute_bounded;
	unsigned conc_shared; /* concurrent stages placed on one site */
};

static void check_round(unsigned seed, unsigned nsites, unsigned nregions,
			unsigned njobs, struct stats *st)
{
	char err[512] = "";
	struct mer_fed *fed = NULL;
	struct mer_policy *pol = NULL;
	struct mer_engine *e = NULL, *e2 = NULL;
	struct mer_job *jobs[8] = {0};
	struct mer_place_input in[8];
	struct mer_placement *pl[8] = {0}, *again[8] = {0};
	json_t *fj, *pj;

	rng_state = 0x9E3779B97F4A7C15ULL * (seed + 1);
	fj = gen_fed(nsites, nregions);
	pj = gen_policy(nregions);
	memset(in, 0, sizeof(in));
	if (mer_fed_from_json(fj, NULL, &fed, err, sizeof(err)) ||
	    mer_policy_from_json(pj, NULL, &pol, err, sizeof(err))) {
		t_fail(__FILE__, __LINE__, "seed %u: %s", seed, err);
		goto out;
	}
	for (unsigned j = 0; j < njobs; j++) {
		json_t *jj = gen_job(j, nsites <= 8 ? 0 : 1);
		int rv =
		    mer_job_from_json(jj, NULL, &jobs[j], err, sizeof(err));
		json_decref(jj);
		if (rv) {
			t_fail(__FILE__, __LINE__, "seed %u job: %s", seed,
			       err);
			goto out;
		}
		in[j].job = jobs[j];
		in[j].now = 1000;
	}
	if (mer_engine_new(fed, pol, &e) || mer_engine_new(fed, pol, &e2) ||
	    mer_engine_place_batch(e, in, njobs, pl) ||
	    mer_engine_place_batch(e2, in, njobs, again)) {
		t_fail(__FILE__, __LINE__, "seed %u: place failed", seed);
		goto out;
	}
	/* capacity left in the round, per site and kind: free shared
	 * capacity in used[], preemptible by class in pre[] */
	double *used = calloc(fed->nsites * fed->nkinds, sizeof(double));
	double *pre =
	    calloc(fed->nsites * MER_PRIO_COUNT * fed->nkinds, sizeof(double));
	for (size_t s = 0; s < fed->nsites; s++)
		for (size_t p = 0; p < fed->sites[s].npools; p++)
			for (size_t k = 0; k < fed->nkinds; k++) {
				const struct mer_res *r =
				    &fed->sites[s].pools[p].res[k];
				used[s * fed->nkinds + k] += r->usable;
				for (int c = 0; c < MER_PRIO_COUNT; c++)
					pre[(s * MER_PRIO_COUNT + (size_t)c) *
						fed->nkinds +
					    k] += r->preemptible[c];
			}
	/* the round's start, for the brute force over job 0 */
	size_t ncap = fed->nsites * fed->nkinds;
	double *used0 = malloc(ncap * sizeof(double) + 1);
	double *pre0 = malloc(ncap * MER_PRIO_COUNT * sizeof(double) + 1);
	if (used0 && pre0) {
		memcpy(used0, used, ncap * sizeof(double));
		memcpy(pre0, pre, ncap * MER_PRIO_COUNT * sizeof(double));
	}
	double qa100 = 0, qh800 = 0;
	for (unsigned j = 0; j < njobs; j++) {
		const struct mer_placement *p = pl[j];
		st->cases++;
		json_t *x = mer_placement_to_json(p, 0);
		json_t *y = mer_placement_to_json(again[j], 0);
		char *sx = mer_json_dumps(x), *sy = mer_json_dumps(y);
		if (!sx || !sy || strcmp(sx, sy))
			t_fail(__FILE__, __LINE__,
			       "seed %u job %u: not "
			       "deterministic",
			       seed, j);
		free(sx);
		free(sy);
		json_decref(x);
		json_decref(y);
		if (!p->complete) {
			st->pending++;
			continue;
		}
		st->complete++;
		if (p->total >
		    p->stage_by_stage_total + 1e-9 * (1 + fabs(p->total)))
			t_fail(__FILE__, __LINE__,
			       "seed %u job %u: joint %.6f > greedy %.6f", seed,
			       j, p->total, p->stage_by_stage_total);
		/* within the job: stages that can run at once fit
		 * together where they share a site */
		if (over_commits(p, NULL, 1, used, pre))
			t_fail(__FILE__, __LINE__,
			       "seed %u job %u: concurrent stages of the job "
			       "over-commit a site",
			       seed, j);
		{
			uint32_t at[8];
			for (size_t i = 0; i < p->nstages && i < 8; i++)
				at[i] = (uint32_t)p->stages[i].site;
			st->conc_shared +=
			    p->nstages <= 8 && shares_a_site(p, at);
		}
		int has_replicas = 0;
		for (size_t i = 0; i < p->nstages; i++) {
			const struct mer_stage_result *r = &p->stages[i];
			const struct mer_stage *s = &jobs[j]->stages[i];
			has_replicas |= s->replicas > 1;
			for (size_t k = 0; k < r->nshares; k++) {
				size_t site = r->shares[k].site;
				if (!region_allowed(pol, fed, jobs[j], i,
						    &fed->sites[site]))
					t_fail(__FILE__, __LINE__,
					       "seed %u job %u stage %zu: "
					       "residency broken at %s",
					       seed, j, i,
					       fed->sites[site].name);
				int gk = r->shares[k].gpu_kind;
				double need = s->gpu_count *
					      (double)r->shares[k].replicas;
				/* Stages of one job are checked one by one
				 * (a chain's stages do not overlap); earlier
				 * jobs of the round hold what they took:
				 * free capacity first, then preemptible
				 * capacity of classes this one may preempt. */
				double left =
				    used[site * fed->nkinds + (size_t)gk];
				for (int c = 0; c < MER_PRIO_COUNT; c++)
					if (pol->preempt[jobs[j]->priority][c])
						left += pre_left(fed, pre, site,
								 c, gk);
				if (need > left + 1e-9)
					t_fail(__FILE__, __LINE__,
					       "seed %u job %u stage %zu: "
					       "capacity exceeded at %s",
					       seed, j, i,
					       fed->sites[site].name);
				const char *kind = fed->kinds[gk];
				double *q = !strcmp(kind, "gpu:a100")	? &qa100
					    : !strcmp(kind, "gpu:h800") ? &qh800
									: NULL;
				const struct mer_tenant_policy *tp =
				    mer_policy_tenant(pol, "t");
				if (q) {
					double lim = 0;
					for (size_t g = 0; g < tp->ngpus; g++)
						if (!strcmp(tp->gpus[g].model,
							    kind + 4))
							lim = tp->gpus[g].gpus;
					if (need > lim - *q + 1e-9)
						t_fail(__FILE__, __LINE__,
						       "seed %u job %u: quota "
						       "for %s broken",
						       seed, j, kind);
				}
			}
		}
		/* quota counts what earlier jobs of the round placed */
		for (size_t i = 0; i < p->nstages; i++) {
			const struct mer_stage_result *r = &p->stages[i];
			for (size_t k = 0; k < r->nshares; k++) {
				int gk = r->shares[k].gpu_kind;
				const char *kind = fed->kinds[gk];
				double g = jobs[j]->stages[i].gpu_count *
					   (double)r->shares[k].replicas;
				take(fed, pol, jobs[j]->priority, used, pre,
				     r->shares[k].site, gk, g);
				if (!strcmp(kind, "gpu:a100"))
					qa100 += g;
				if (!strcmp(kind, "gpu:h800"))
					qh800 += g;
			}
		}
		if (j == 0 && used0 && pre0 && !has_replicas &&
		    fed->nsites <= 8 && p->nstages <= 4 && forest(jobs[j]) &&
		    strstr(p->note, "budget") == NULL) {
			uint32_t chosen[8], fa[8];
			double fb;
			double b = brute(p, chosen, used0, pre0, &fb, fa);
			if (!shares_a_site(p, fa)) {
				/* the free optimum has no in-job conflict:
				 * the engine must find it exactly */
				st->brute_checked++;
				if (fabs(fb - p->total) > 1e-6 * (1 + fabs(fb)))
					t_fail(__FILE__, __LINE__,
					       "seed %u: DP %.6f != brute "
					       "force %.6f",
					       seed, p->total, fb);
			} else {
				/* repaired: feasible, so never below the
				 * best plan that does not over-commit by
				 * site totals (a weaker test than the
				 * engine's per-pool one) */
				st->brute_bounded++;
				if (p->total < b - 1e-6 * (1 + fabs(b)))
					t_fail(__FILE__, __LINE__,
					       "seed %u: DP %.6f below the "
					       "feasible optimum %.6f",
					       seed, p->total, b);
			}
		}
	}
	free(used);
	free(pre);
	free(used0);
	free(pre0);
out:
	for (unsigned j = 0; j < njobs; j++) {
		mer_placement_free(pl[j]);
		mer_placement_free(again[j]);
		mer_job_free(jobs[j]);
	}
	mer_engine_free(e);
	mer_engine_free(e2);
	mer_policy_free(pol);
	mer_fed_free(fed);
	json_decref(fj);
	json_decref(pj);
}

static void test_small_exact(void)
{
	struct stats st = {0};

	for (unsigned seed = 0; seed < 300; seed++)
		check_round(seed, 3 + seed % 6, 1 + seed % 3, 1, &st);
	printf("    %u cases, %u complete, %u checked by brute force, %u "
	       "bounded (in-job conflicts), %u share a site concurrently\n",
	       st.cases, st.complete, st.brute_checked, st.brute_bounded,
	       st.conc_shared);
	T_EXPECT(st.brute_checked >= 50);
}

static void test_batches(void)
{
	struct stats st = {0};

	for (unsigned seed = 1000; seed < 1150; seed++)
		check_round(seed, 10 + seed % 30, 2 + seed % 5, 1 + seed % 6,
			    &st);
	printf("    %u placements, %u complete, %u pending, %u with "
	       "concurrent stages on one site\n",
	       st.cases, st.complete, st.pending, st.conc_shared);
	/* the in-job check is not vacuous: some concurrent stages do
	 * share a site (where it has room for both) */
	T_EXPECT(st.conc_shared > 0);
	T_EXPECT(st.complete >= st.cases / 4);
}

static void test_larger(void)
{
	struct stats st = {0};

	for (unsigned seed = 5000; seed < 5020; seed++)
		check_round(seed, 200 + seed % 300, 20, 3, &st);
	T_EXPECT(st.complete > 0);
}

static const struct t_case cases[] = {
    {"small_exact", test_small_exact},
    {"batches", test_batches},
    {"larger", test_larger},
};

T_MAIN("placement_prop", cases)
