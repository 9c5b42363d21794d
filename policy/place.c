/*
 * The placement engine: filter every site for every stage (keeping the
 * reason), score the feasible ones, then choose all stages' sites together
 * (exact dynamic programming over chains and trees, aggregated by
 * (region, WAN) class; a never-worse local search for other DAGs). No I/O
 * and no clock. JSON output and reason texts are in place_json.c.
 */
#include "policy/place.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define INF ((double)INFINITY)
#define MAX_GK 16
#define NONE UINT32_MAX
#define LOCAL_SEARCH_PASSES 50

/* What earlier placements of this round took for one tenant. */
struct round_tenant {
	const char *tenant;
	double *gpus; /* [nkinds] */
	double stages;
	double spent;
};

struct mer_engine {
	const struct mer_fed *fed;
	const struct mer_policy *pol;
	size_t npools;
	size_t *pool0;	  /* [nsites + 1] first pool (global index) */
	uint32_t *porder; /* [npools] each site's pools by est. wait */
	const struct mer_pool **pools; /* [npools] */
	double *cap;	 /* [npools * nkinds] usable less reservations */
	double *pre;	 /* [npools * MER_PRIO_COUNT * nkinds] */
	uint8_t *tier;	 /* [nsites]; pol->ntiers = no tier matched */
	double *pref;	 /* [nsites] preference USD */
	uint8_t *res_ok; /* [nresidency * nregions] */
	uint64_t *kmask; /* [nsites] resource kinds some pool has */
	double *cls_eg;	 /* [ncls * ncls] link egress USD per GB */
	double *cls_spb; /* [ncls * ncls] seconds per byte */
	double *cls_bwd; /* [ncls * ncls] bandwidth in bits per second */
	/* Hot site fields side by side (struct of arrays), so a pass over
	 * all sites reads a few dense arrays instead of every mer_site. */
	uint32_t *scls;		  /* [nsites] class */
	uint32_t *sridx;	  /* [nsites] region */
	double *seg;		  /* [nsites] egress USD per GB */
	const double **sprice;	  /* [nsites] price per kind */
	uint8_t *sslow;		  /* [nsites] 1: health, drain, heartbeat or
				     tenant lists need looking at */
	uint32_t *cls_rep;	  /* [ncls * 2] two member sites, or NONE */
	unsigned *pfab;		  /* [npools] fabric bits */
	double *pwait;		  /* [npools] advertised wait */
	struct mer_arena scratch; /* per-call memory, kept between calls */
	struct round_tenant *rt;
	size_t nrt, caprt;
};

/* An input that is not another stage's output. */
struct ext_in {
	size_t input;
	double bytes;
	uint32_t *rep; /* usable replica sites */
	size_t nrep;
	uint8_t *holds;	       /* [nsites] 1 where a usable replica is */
	int region;	       /* outside the catalog: its region, else -1 */
	double *kc, *keg, *kt; /* per class: weighted cost, USD, seconds */
};

struct edge {
	size_t p, c;
	double bytes;
};

/* What mer_placement_eval needs besides the federation, policy and job to
 * rebuild a site's terms: lives in the placement's arena. */
struct mer_stage_expl {
	int fixed;	    /* cost sunk: only the producers' terms count */
	int explained;	    /* the producers' terms were added (plan made) */
	struct ext_in *ext; /* inputs that are not stage outputs */
	size_t next;
	const uint8_t *near_ok;	 /* [nregions] or NULL */
	double *spill, *spill_m; /* [nsites] replicas spilled, or NULL */
	size_t np;		 /* producer edges, incidence order */
	uint32_t *psite;	 /* where each producer was placed */
	double *pbytes;
};

struct sinfo {
	int fixed_site; /* -1: placed by this call */
	int finished;
	int gk[MAX_GK]; /* acceptable GPU kinds present (-1: no GPU) */
	int ngk;
	uint64_t gkmask; /* the kinds of gk[] as bits, 0 for no GPU */
	unsigned fabric; /* the stage's fabric bit, 0 for any */
	double cpu, mem, gpu;
	unsigned R;
	const char **tags;
	size_t ntags;
	uint8_t *region_ok;   /* [nregions] */
	int32_t *region_rule; /* [nregions] -1: job constraint */
	uint8_t *near_ok;     /* [nregions] or NULL */
	int missing;	      /* input with no usable replica, or -1 */
	struct ext_in *ext;
	size_t next;
	double in_bytes; /* read from producers */
	double runtime;	 /* from the job or the policy default */
	int runtime_given;
	double *hrt, *hwait, *hn; /* learned, per site, or NULL */
	double *u, *um;		  /* unary objective / money, INF if not */
	double *F, *V, *MF, *MV;  /* replicas: per site fixed + per replica */
	unsigned *units;
};

struct pw {
	double we; /* weight on egress USD */
	double wt; /* USD per second of transfer */
};

struct ctx {
	struct mer_engine *e;
	const struct mer_fed *fed;
	const struct mer_policy *pol;
	const struct mer_place_input *in;
	const struct mer_job *job;
	struct mer_placement *out;
	struct mer_arena tmp;
	struct sinfo *si;
	struct edge *edges;
	size_t nedges;
	size_t **inc; /* per stage: incident edge indices */
	size_t *ninc;
	const struct mer_tenant_policy *tp;
	struct round_tenant *rt;
	double vot_s;	 /* USD per second of the job's class */
	int can_preempt; /* the job's class may preempt some class */
	uint8_t *site_ok;
	uint8_t *region_job; /* [nregions] allowed by job constraints */
	double budget_left;  /* < 0: none */
	int stages_blocked;
	double *quota_left; /* [nkinds] GPUs left, INF for no quota */
	/* Stages of this job that may run at once (neither precedes the
	 * other) must fit a site together: see the "in-job concurrency"
	 * section. All NULL/0 when every pair of stages is ordered. */
	int has_conc;
	uint8_t *anc;	       /* [ns * ns] anc[i*ns+j]: j before i */
	struct cand **rsorted; /* replicated stages: spill order */
	size_t *nrsorted;
	struct mer_replica_share **sh; /* per stage: shares at sh_t[i] */
	size_t *nsh;
	uint32_t *sh_t;
	double *save; /* one site's pools' capacity, saved while testing */
	size_t save_n;
	size_t bad[64]; /* stages of the last set found not to fit */
	size_t nbad;
	uint32_t bad_site;
	int conc_fail; /* no plan keeps concurrent stages within capacity */
};

static void *talloc(struct ctx *c, size_t n)
{
	return mer_arena_alloc(&c->tmp, n ? n : 1);
}

/* Memory the placement keeps (for mer_placement_eval). */
static void *palloc(struct ctx *c, size_t n)
{
	return mer_arena_alloc(&c->out->arena, n ? n : 1);
}

/* ---- engine ---- */

static double link_bw(const struct mer_fed *fed, uint32_t r1, double w1,
		      uint32_t r2, double w2)
{
	double bw = mer_fed_link(fed, r1, r2)->gbps;

	if (w1 > 0 && w1 < bw)
		bw = w1;
	if (w2 > 0 && w2 < bw)
		bw = w2;
	return bw;
}

static int cmp_wait(const struct mer_engine *e, uint32_t a, uint32_t b)
{
	double x = e->pools[a]->est_wait_s, y = e->pools[b]->est_wait_s;
	return x < y ? -1 : x > y ? 1 : (a < b ? -1 : a > b);
}

void mer_engine_reset(struct mer_engine *e)
{
	const struct mer_fed *fed = e->fed;
	size_t nk = fed->nkinds;

	for (size_t p = 0; p < e->npools; p++) {
		for (size_t k = 0; k < nk; k++) {
			const struct mer_res *r = &e->pools[p]->res[k];
			e->cap[p * nk + k] = r->present ? r->usable : 0;
			for (int c = 0; c < MER_PRIO_COUNT; c++)
				e->pre[(p * MER_PRIO_COUNT + (size_t)c) * nk +
				       k] = r->present ? r->preemptible[c] : 0;
		}
	}
	for (size_t i = 0; i < e->nrt; i++)
		free(e->rt[i].gpus);
	free(e->rt);
	e->rt = NULL;
	e->nrt = e->caprt = 0;
}

void mer_engine_free(struct mer_engine *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->nrt; i++)
		free(e->rt[i].gpus);
	free(e->rt);
	free(e->pool0);
	free(e->porder);
	free(e->pools);
	free(e->cap);
	free(e->pre);
	free(e->tier);
	free(e->pref);
	free(e->res_ok);
	free(e->cls_eg);
	free(e->cls_spb);
	free(e->cls_bwd);
	free(e->kmask);
	free(e->scls);
	free(e->sridx);
	free(e->seg);
	free(e->sprice);
	free(e->sslow);
	free(e->cls_rep);
	free(e->pfab);
	free(e->pwait);
	mer_arena_free(&e->scratch);
	free(e);
}

int mer_engine_new(const struct mer_fed *fed, const struct mer_policy *pol,
		   struct mer_engine **out)
{
	struct mer_engine *e = calloc(1, sizeof(*e));
	size_t n = fed->nsites, nk = fed->nkinds, nr = fed->nregions;

	*out = NULL;
	if (!e)
		return MER_ENOMEM;
	e->fed = fed;
	e->pol = pol;
	for (size_t s = 0; s < n; s++)
		e->npools += fed->sites[s].npools;
	e->pool0 = calloc(n + 1, sizeof(size_t));
	e->porder = calloc(e->npools + 1, sizeof(uint32_t));
	e->pools = calloc(e->npools + 1, sizeof(*e->pools));
	e->cap = calloc(e->npools * nk + 1, sizeof(double));
	e->pre = calloc(e->npools * MER_PRIO_COUNT * nk + 1, sizeof(double));
	e->tier = calloc(n + 1, 1);
	e->pref = calloc(n + 1, sizeof(double));
	e->res_ok = calloc(pol->nresidency * nr + 1, 1);
	e->cls_eg = calloc(fed->ncls * fed->ncls + 1, sizeof(double));
	e->cls_spb = calloc(fed->ncls * fed->ncls + 1, sizeof(double));
	e->kmask = calloc(n + 1, sizeof(uint64_t));
	e->cls_bwd = calloc(fed->ncls * fed->ncls + 1, sizeof(double));
	e->scls = calloc(n + 1, sizeof(uint32_t));
	e->sridx = calloc(n + 1, sizeof(uint32_t));
	e->seg = calloc(n + 1, sizeof(double));
	e->sprice = calloc(n + 1, sizeof(*e->sprice));
	e->sslow = calloc(n + 1, 1);
	e->cls_rep = calloc(fed->ncls * 2 + 1, sizeof(uint32_t));
	e->pfab = calloc(e->npools + 1, sizeof(unsigned));
	e->pwait = calloc(e->npools + 1, sizeof(double));
	if (!e->kmask || !e->pool0 || !e->porder || !e->pools || !e->cap ||
	    !e->pre || !e->tier || !e->pref || !e->res_ok || !e->cls_eg ||
	    !e->cls_spb || !e->cls_bwd || !e->scls || !e->sridx || !e->seg ||
	    !e->sprice || !e->sslow || !e->cls_rep || !e->pfab || !e->pwait) {
		mer_engine_free(e);
		return MER_ENOMEM;
	}
	size_t p = 0;
	for (size_t s = 0; s < n; s++) {
		const struct mer_site *site = &fed->sites[s];
		e->pool0[s] = p;
		for (size_t k = 0; k < site->npools; k++) {
			e->pools[p + k] = &site->pools[k];
			e->pfab[p + k] = site->pools[k].fabric;
			e->pwait[p + k] = site->pools[k].est_wait_s;
			for (size_t q = 0; q < fed->nkinds; q++)
				if (site->pools[k].res[q].present)
					e->kmask[s] |= 1ULL << q;
			/* insertion sort: sites have few pools */
			size_t j = k;
			e->porder[p + j] = (uint32_t)(p + k);
			while (j > 0 && cmp_wait(e, e->porder[p + j],
						 e->porder[p + j - 1]) < 0) {
				uint32_t t = e->porder[p + j];
				e->porder[p + j] = e->porder[p + j - 1];
				e->porder[p + j - 1] = t;
				j--;
			}
		}
		p += site->npools;
		e->scls[s] = site->cls;
		e->sridx[s] = site->ridx;
		e->seg[s] = site->egress_gb;
		e->sprice[s] = site->price_hour;
		e->sslow[s] =
		    site->health != MER_HEALTH_HEALTHY || site->drained ||
		    (pol->site_stale_after_s > 0 && site->last_heartbeat > 0) ||
		    site->ntenants_allow || site->ntenants_deny;
		e->tier[s] = (uint8_t)pol->ntiers;
		for (size_t t = 0; t < pol->ntiers; t++) {
			if (mer_selector_match(&pol->tiers[t].match, site)) {
				e->tier[s] = (uint8_t)t;
				break;
			}
		}
		for (size_t k = 0; k < pol->nprefs; k++) {
			if (mer_selector_match(&pol->prefs[k].match, site))
				e->pref[s] += pol->prefs[k].usd;
		}
	}
	e->pool0[n] = p;
	for (size_t k = 0; k < fed->ncls * 2; k++)
		e->cls_rep[k] = NONE;
	for (uint32_t s = 0; s < n; s++) {
		uint32_t *r = &e->cls_rep[fed->sites[s].cls * 2];
		if (r[0] == NONE)
			r[0] = s;
		else if (r[1] == NONE)
			r[1] = s;
	}
	for (size_t a = 0; a < fed->ncls; a++) {
		for (size_t b = 0; b < fed->ncls; b++) {
			uint32_t r1 = fed->cls_region[a],
				 r2 = fed->cls_region[b];
			double bw = link_bw(fed, r1, fed->cls_wan[a], r2,
					    fed->cls_wan[b]);
			e->cls_eg[a * fed->ncls + b] =
			    mer_fed_link(fed, r1, r2)->egress_gb;
			e->cls_spb[a * fed->ncls + b] = 8 / (bw * 1e9);
			e->cls_bwd[a * fed->ncls + b] = bw * 1e9;
		}
	}
	for (size_t r = 0; r < pol->nresidency; r++) {
		const struct mer_residency *rule = &pol->residency[r];
		for (size_t k = 0; k < rule->nregions; k++) {
			int ri = mer_fed_region_index(fed, rule->regions[k]);
			if (ri >= 0)
				e->res_ok[r * nr + (size_t)ri] = 1;
		}
	}
	mer_engine_reset(e);
	*out = e;
	return 0;
}

static struct round_tenant *round_tenant(struct mer_engine *e,
					 const char *tenant, int create)
{
	for (size_t i = 0; i < e->nrt; i++) {
		if (strcmp(e->rt[i].tenant, tenant) == 0)
			return &e->rt[i];
	}
	if (!create)
		return NULL;
	if (e->nrt == e->caprt) {
		size_t nc = e->caprt ? e->caprt * 2 : 8;
		struct round_tenant *n = realloc(e->rt, nc * sizeof(*n));
		if (!n)
			return NULL;
		e->rt = n;
		e->caprt = nc;
	}
	struct round_tenant *t = &e->rt[e->nrt];
	memset(t, 0, sizeof(*t));
	/* The tenant string belongs to a job that may be freed before the
	 * round ends, so a hidden copy lives after the GPU array. */
	size_t len = strlen(tenant) + 1;
	t->gpus = calloc(1, e->fed->nkinds * sizeof(double) + len);
	if (!t->gpus)
		return NULL;
	memcpy((char *)(t->gpus + e->fed->nkinds), tenant, len);
	t->tenant = (const char *)(t->gpus + e->fed->nkinds);
	e->nrt++;
	return t;
}

/* ---- per-stage preparation ---- */

static int add_tag(struct ctx *c, struct sinfo *si, const char *tag,
		   size_t *cap)
{
	for (size_t i = 0; i < si->ntags; i++) {
		if (strcmp(si->tags[i], tag) == 0)
			return 0;
	}
	if (si->ntags == *cap) {
		size_t nc = *cap ? *cap * 2 : 8;
		const char **n = talloc(c, nc * sizeof(*n));
		if (!n)
			return MER_ENOMEM;
		if (si->ntags)
			memcpy(n, si->tags, si->ntags * sizeof(*n));
		si->tags = n;
		*cap = nc;
	}
	si->tags[si->ntags++] = tag;
	return 0;
}

/* 1 when every residency rule for the tags allows region r; *rule gets the
 * first rule that does not. */
static int tags_allow(const struct ctx *c, const char *const *tags,
		      size_t ntags, char **tags2, size_t ntags2, uint32_t r,
		      int32_t *rule)
{
	const struct mer_policy *pol = c->pol;
	size_t nr = c->fed->nregions;

	for (size_t k = 0; k < pol->nresidency; k++) {
		int hit = 0;
		for (size_t i = 0; i < ntags && !hit; i++)
			hit = strcmp(tags[i], pol->residency[k].tag) == 0;
		for (size_t i = 0; i < ntags2 && !hit; i++)
			hit = strcmp(tags2[i], pol->residency[k].tag) == 0;
		if (hit && !c->e->res_ok[k * nr + r]) {
			if (rule)
				*rule = (int32_t)k;
			return 0;
		}
	}
	return 1;
}

static int prep_ext(struct ctx *c, struct sinfo *si, const struct mer_stage *st,
		    size_t k, size_t *cap)
{
	const struct mer_fed *fed = c->fed;
	const struct mer_input *in = &st->inputs[k];
	struct ext_in *x = &si->ext[si->next];
	const struct mer_policy *pol = c->pol;
	size_t K = fed->ncls;
	int first = mer_fed_dataset_first(fed, in->name);
	int rv;

	memset(x, 0, sizeof(*x));
	x->input = k;
	x->region = -1;
	x->bytes = in->bytes;
	for (size_t t = 0; t < in->ntags; t++)
		if ((rv = add_tag(c, si, in->tags[t], cap)))
			return rv;
	size_t cnt = 0;
	for (size_t d = first < 0 ? fed->ndatasets : (size_t)first;
	     d < fed->ndatasets && strcmp(fed->datasets[d].name, in->name) == 0;
	     d++)
		cnt++;
	x->rep = palloc(c, (cnt + 1) * sizeof(uint32_t));
	if (!x->rep)
		return MER_ENOMEM;
	for (size_t j = 0; j < cnt; j++) {
		const struct mer_dataset *d = &fed->datasets[(size_t)first + j];
		const struct mer_site *rs = &fed->sites[d->site];
		for (size_t t = 0; t < d->ntags; t++)
			if ((rv = add_tag(c, si, d->tags[t], cap)))
				return rv;
		if (x->bytes < 0)
			x->bytes = d->bytes;
		/* A replica can serve only from a live site, and tagged data
		 * only from a region its rules allow. */
		if (rs->health == MER_HEALTH_DOWN)
			continue;
		if (!tags_allow(c, (const char *const *)d->tags, d->ntags,
				in->tags, in->ntags, rs->ridx, NULL))
			continue;
		x->rep[x->nrep++] = d->site;
	}
	if (in->region)
		x->region = mer_fed_region_index(fed, in->region);
	if (x->bytes < 0)
		x->bytes = 0;
	if (x->nrep == 0 && x->region < 0) {
		if (si->missing < 0)
			si->missing = (int)k;
		si->next++;
		return 0;
	}
	x->kc = palloc(c, K * sizeof(double));
	x->keg = palloc(c, K * sizeof(double));
	x->kt = palloc(c, K * sizeof(double));
	x->holds = palloc(c, fed->nsites);
	double *rbest = talloc(c, K * sizeof(double));
	if (!x->kc || !x->keg || !x->kt || !x->holds || !rbest)
		return MER_ENOMEM;
	/* Replicas of one class differ only in their site's egress price:
	 * keep the cheapest per class, then cost class to class. */
	for (size_t cl = 0; cl < K; cl++)
		rbest[cl] = INF;
	for (size_t j = 0; j < x->nrep; j++) {
		const struct mer_site *rs = &fed->sites[x->rep[j]];
		x->holds[x->rep[j]] = 1;
		if (rs->egress_gb < rbest[rs->cls])
			rbest[rs->cls] = rs->egress_gb;
	}
	double B = x->bytes, B9 = B / 1e9, B8 = B * 8;
	double we = pol->w.egress, wt = c->vot_s * pol->w.transfer_time;
	const double *ceg = c->e->cls_eg, *cbw = c->e->cls_bwd;
	/* Only classes holding a replica can be sources; same order as
	 * a scan over all classes, so ties resolve alike. */
	uint32_t *src = talloc(c, K * sizeof(uint32_t));
	size_t nsrc = 0;
	if (!src)
		return MER_ENOMEM;
	for (size_t j = 0; j < K; j++)
		if (rbest[j] != INF)
			src[nsrc++] = (uint32_t)j;
	for (size_t cl = 0; cl < K; cl++) {
		uint32_t r2 = fed->cls_region[cl];
		double w2 = fed->cls_wan[cl];
		double kc = INF, keg = 0, kt = 0;
		for (size_t q = 0; q < nsrc; q++) {
			size_t j = src[q], jk = j * K + cl;
			double eg = B9 * (rbest[j] + ceg[jk]);
			double t = B8 / cbw[jk];
			double v = we * eg + wt * t;
			if (v < kc) {
				kc = v;
				keg = eg;
				kt = t;
			}
		}
		x->kc[cl] = kc;
		x->keg[cl] = keg;
		x->kt[cl] = kt;
		if (x->region >= 0) {
			/* the input's own region, outside the catalog */
			uint32_t r1 = (uint32_t)x->region;
			double eg =
			    B / 1e9 * mer_fed_link(fed, r1, r2)->egress_gb;
			double t = B * 8 / (link_bw(fed, r1, 0, r2, w2) * 1e9);
			double v = pol->w.egress * eg +
				   c->vot_s * pol->w.transfer_time * t;
			if (v < x->kc[cl]) {
				x->kc[cl] = v;
				x->keg[cl] = eg;
				x->kt[cl] = t;
			}
		}
	}
	si->next++;
	return 0;
}

static int prep_history(struct ctx *c, size_t i)
{
	const struct mer_place_input *in = c->in;
	const struct mer_stage *st = &c->job->stages[i];
	struct sinfo *si = &c->si[i];
	size_t n = c->fed->nsites;
	char jobkey[160], kindkey[48];

	if (!in->nhistory)
		return 0;
	snprintf(jobkey, sizeof(jobkey), "job:%s/%s", c->job->name, st->name);
	snprintf(kindkey, sizeof(kindkey), "kind:%s", mer_kind_name(st->kind));
	for (size_t h = 0; h < in->nhistory; h++) {
		const struct mer_history_entry *he = &in->history[h];
		int job = strcmp(he->key, jobkey) == 0;
		if (!job && strcmp(he->key, kindkey) != 0)
			continue;
		int s = mer_fed_site_index(c->fed, he->site);
		if (s < 0 || he->samples <= 0)
			continue;
		if (!si->hrt) {
			si->hrt = talloc(c, n * sizeof(double));
			si->hwait = talloc(c, n * sizeof(double));
			si->hn = talloc(c, n * sizeof(double));
			if (!si->hrt || !si->hwait || !si->hn)
				return MER_ENOMEM;
			for (size_t k = 0; k < n; k++)
				si->hrt[k] = si->hwait[k] = -1;
		}
		/* A job-specific entry beats the stage kind's: mark it with
		 * a negative sample count while filling. */
		if (!job && si->hn[s] < 0)
			continue;
		si->hrt[s] = he->runtime_s;
		si->hwait[s] = he->wait_s;
		si->hn[s] = job ? -he->samples : he->samples;
	}
	if (si->hn)
		for (size_t k = 0; k < n; k++)
			si->hn[k] = fabs(si->hn[k]);
	return 0;
}

static int prep_stage(struct ctx *c, size_t i)
{
	const struct mer_fed *fed = c->fed;
	const struct mer_stage *st = &c->job->stages[i];
	struct sinfo *si = &c->si[i];
	size_t nr = fed->nregions, cap = 0;
	int rv;

	si->cpu = st->cpu;
	si->mem = st->memory_mb;
	si->gpu = st->gpu_count;
	si->R = st->replicas ? st->replicas : 1;
	si->missing = -1;
	si->ngk = 0;
	if (st->gpu_count == 0) {
		si->gk[si->ngk++] = -1;
	} else {
		for (size_t m = 0; m < st->ngpu_models && si->ngk < MAX_GK;
		     m++) {
			char kind[80];
			snprintf(kind, sizeof(kind), "gpu:%s",
				 st->gpu_models[m]);
			int k = mer_fed_kind_index(fed, kind);
			if (k >= 0) {
				si->gk[si->ngk++] = k;
				si->gkmask |= 1ULL << k;
			}
		}
	}
	si->fabric = st->fabric;
	si->runtime_given = st->duration_s > 0;
	si->runtime = si->runtime_given ? st->duration_s
					: c->pol->default_duration_s[st->kind];
	/* Taint: a stage carries the tags of everything it reads and
	 * writes, so tagged data cannot leave its regions through a
	 * derived dataset. */
	for (size_t k = 0; k < st->noutputs; k++)
		for (size_t t = 0; t < st->outputs[k].ntags; t++)
			if ((rv = add_tag(c, si, st->outputs[k].tags[t], &cap)))
				return rv;
	si->ext = palloc(c, (st->ninputs + 1) * sizeof(*si->ext));
	if (!si->ext)
		return MER_ENOMEM;
	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		if (in->producer < 0) {
			if ((rv = prep_ext(c, si, st, k, &cap)))
				return rv;
			continue;
		}
		const struct sinfo *ps = &c->si[in->producer];
		for (size_t t = 0; t < ps->ntags; t++)
			if ((rv = add_tag(c, si, ps->tags[t], &cap)))
				return rv;
		for (size_t t = 0; t < in->ntags; t++)
			if ((rv = add_tag(c, si, in->tags[t], &cap)))
				return rv;
		double b =
		    c->job->stages[in->producer].outputs[in->output].bytes;
		si->in_bytes += b;
		size_t e;
		for (e = 0; e < c->nedges; e++) {
			if (c->edges[e].p == (size_t)in->producer &&
			    c->edges[e].c == i)
				break;
		}
		if (e == c->nedges)
			c->edges[c->nedges++] =
			    (struct edge){(size_t)in->producer, i, 0};
		c->edges[e].bytes += b;
	}
	si->region_ok = talloc(c, nr);
	si->region_rule = talloc(c, nr * sizeof(int32_t));
	if (!si->region_ok || !si->region_rule)
		return MER_ENOMEM;
	for (uint32_t r = 0; r < nr; r++) {
		si->region_rule[r] = -1;
		si->region_ok[r] =
		    c->region_job[r] && tags_allow(c, si->tags, si->ntags, NULL,
						   0, r, &si->region_rule[r]);
	}
	if (st->nnear) {
		si->near_ok = palloc(c, nr);
		if (!si->near_ok)
			return MER_ENOMEM;
		for (size_t k = 0; k < st->nnear; k++) {
			int r = mer_fed_region_index(fed, st->near[k]);
			if (r >= 0)
				si->near_ok[r] = 1;
		}
	}
	return prep_history(c, i);
}

/* ---- filter and score ---- */

static int pool_fits_fabric(const struct sinfo *si, const struct mer_pool *p,
			    unsigned want)
{
	(void)si;
	return want == 0 || (p->fabric & want);
}

static inline double avail(const struct ctx *c, size_t p, int k, int with_pre)
{
	const struct mer_engine *e = c->e;
	size_t nk = c->fed->nkinds;
	double a = e->cap[p * nk + (size_t)k];

	if (with_pre) {
		for (int cl = 0; cl < MER_PRIO_COUNT; cl++) {
			if (c->pol->preempt[c->job->priority][cl])
				a += e->pre[(p * MER_PRIO_COUNT + (size_t)cl) *
						nk +
					    (size_t)k];
		}
	}
	return a;
}

/* Replica units (each within one pool) pool p can hold. */
static unsigned pool_units(const struct ctx *c, const struct sinfo *si,
			   size_t p, int gk, int with_pre)
{
	double u = INF;

	if (si->cpu > 0)
		u = fmin(u,
			 floor(avail(c, p, MER_KIND_CPU, with_pre) / si->cpu +
			       1e-9));
	if (si->mem > 0)
		u = fmin(u,
			 floor(avail(c, p, MER_KIND_MEM, with_pre) / si->mem +
			       1e-9));
	if (gk >= 0)
		u = fmin(u, floor(avail(c, p, gk, with_pre) / si->gpu + 1e-9));
	if (u > 1e6)
		u = 1e6;
	return u > 0 ? (unsigned)u : 0;
}

struct fit {
	unsigned units;
	double wait; /* advertised wait of the last pool needed */
	int reason;  /* when units == 0 */
	int kind;
	double need, have;
};

/* How many replicas (up to want) fit at site s with GPU kind gk. */
static void fit_site(const struct ctx *c, const struct sinfo *si, uint32_t s,
		     int gk, unsigned want, int gang, int with_pre,
		     struct fit *f)
{
	const struct mer_engine *e = c->e;
	unsigned fabric = si->fabric;
	size_t p0 = e->pool0[s], p1 = e->pool0[s + 1];
	int any_fabric = 0;

	memset(f, 0, sizeof(*f));
	f->kind = -1;
	if (want == 1 && !gang && p1 - p0 == 1 && !with_pre) {
		/* The common case, one pool and free capacity only: the
		 * loop below with a single pass, spelled out. */
		size_t p = p0, nk = c->fed->nkinds;
		const double *cp = &e->cap[p * nk];
		if (fabric && !(e->pfab[p] & fabric)) {
			f->reason = MER_R_FABRIC;
			return;
		}
		double hc = si->cpu > 0 ? cp[MER_KIND_CPU] : 0;
		double hm = si->mem > 0 ? cp[MER_KIND_MEM] : 0;
		double hg = gk >= 0 && si->gpu > 0 ? cp[gk] : 0;
		int gfail = gk >= 0 && si->gpu > 0 && hg + 1e-9 < si->gpu;
		int mfail = si->mem > 0 && hm + 1e-9 < si->mem;
		int cfail = si->cpu > 0 && hc + 1e-9 < si->cpu;
		if (!gfail && !mfail && !cfail) {
			f->units = 1;
			f->wait = e->pwait[p];
			return;
		}
		f->reason = MER_R_CAPACITY;
		if (gfail) {
			f->kind = gk;
			f->need = si->gpu;
			f->have = hg;
		} else if (mfail) {
			f->kind = MER_KIND_MEM;
			f->need = si->mem;
			f->have = hm;
		} else {
			f->kind = MER_KIND_CPU;
			f->need = si->cpu;
			f->have = hc;
		}
		return;
	}
	if (want == 1 && !gang) {
		/* One non-gang unit may span the site's pools. */
		double have[3] = {0, 0, 0};
		const double need[3] = {si->cpu, si->mem, si->gpu};
		const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
		for (size_t q = p0; q < p1; q++) {
			size_t p = e->porder[q];
			if (!pool_fits_fabric(si, e->pools[p], fabric))
				continue;
			any_fabric = 1;
			int done = 1;
			for (int k = 0; k < 3; k++) {
				if (kinds[k] < 0 || need[k] <= 0)
					continue;
				have[k] += with_pre
					       ? avail(c, p, kinds[k], 1)
					       : e->cap[p * c->fed->nkinds +
							(size_t)kinds[k]];
				done &= have[k] + 1e-9 >= need[k];
			}
			if (done) {
				f->units = 1;
				f->wait = e->pools[p]->est_wait_s;
				return;
			}
		}
		f->reason = any_fabric ? MER_R_CAPACITY : MER_R_FABRIC;
		for (int k = 2; k >= 0 && any_fabric; k--) {
			if (kinds[k] >= 0 && need[k] > 0 &&
			    have[k] + 1e-9 < need[k]) {
				f->kind = kinds[k];
				f->need = need[k];
				f->have = have[k];
				break;
			}
		}
		return;
	}
	double best_single[3] = {0, 0, 0}, sum[3] = {0, 0, 0};
	for (size_t q = p0; q < p1 && f->units < want; q++) {
		size_t p = e->porder[q];
		if (!pool_fits_fabric(si, e->pools[p], fabric))
			continue;
		any_fabric = 1;
		unsigned u = pool_units(c, si, p, gk, with_pre);
		if (u) {
			f->units += u;
			f->wait = e->pools[p]->est_wait_s;
		}
		const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
		for (int k = 0; k < 3; k++) {
			if (kinds[k] < 0)
				continue;
			double a = avail(c, p, kinds[k], with_pre);
			sum[k] += a;
			best_single[k] = fmax(best_single[k], a);
		}
	}
	if (f->units > want)
		f->units = want;
	if (f->units)
		return;
	if (!any_fabric) {
		f->reason = MER_R_FABRIC;
		return;
	}
	const double need[3] = {si->cpu, si->mem, si->gpu};
	const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
	int split_fits = 1;
	for (int k = 0; k < 3; k++)
		if (kinds[k] >= 0 && need[k] > 0 && sum[k] + 1e-9 < need[k])
			split_fits = 0;
	f->reason = split_fits ? MER_R_GANG : MER_R_CAPACITY;
	for (int k = 2; k >= 0; k--) {
		if (kinds[k] >= 0 && need[k] > 0 &&
		    (split_fits ? best_single[k] : sum[k]) + 1e-9 < need[k]) {
			f->kind = kinds[k];
			f->need = need[k];
			f->have = split_fits ? best_single[k] : sum[k];
			break;
		}
	}
}

/* Rank of a failure: the one closest to fitting is reported. */
static int fail_rank(int reason)
{
	switch (reason) {
	case MER_R_GPU_MODEL:
		return 1;
	case MER_R_FABRIC:
		return 2;
	case MER_R_CAPACITY:
		return 3;
	case MER_R_GANG:
		return 4;
	case MER_R_QUOTA:
		return 5;
	}
	return 0;
}

static int tenant_allowed(const struct mer_site *s, const char *tenant)
{
	for (size_t i = 0; i < s->ntenants_deny; i++)
		if (strcmp(s->tenants_deny[i], tenant) == 0)
			return 0;
	if (!s->ntenants_allow)
		return 1;
	for (size_t i = 0; i < s->ntenants_allow; i++)
		if (strcmp(s->tenants_allow[i], tenant) == 0)
			return 1;
	return 0;
}

static void reject(struct mer_site_brief *ev, int reason)
{
	ev->reason = (uint8_t)reason;
}

/* Price of one replica per hour with GPU kind gk (-1: none). */
static inline double unit_price(const double *ph, double cpu, double mem,
				double gpu, int gk)
{
	return ph[MER_KIND_CPU] * cpu + ph[MER_KIND_MEM] * mem +
	       (gk >= 0 ? ph[gk] * gpu : 0);
}

/* Egress USD and transfer seconds of the stage's outside inputs to site s
 * of class cls. */
static inline void ext_terms(const struct ext_in *ext, size_t next, uint32_t s,
			     uint32_t cls, double *egress, double *tsec)
{
	double eg = 0, t = 0;

	for (size_t x = 0; x < next; x++) {
		const struct ext_in *xi = &ext[x];
		if (!xi->kc || xi->holds[s])
			continue;
		eg += xi->keg[cls];
		t += xi->kt[cls];
	}
	*egress = eg;
	*tsec = t;
}

struct terms {
	double per_replica, compute, policy, money, F, V, total;
};

/* The score of a feasible site: the one formula both the engine and
 * mer_placement_eval use, so the two agree bit for bit. */
static inline void score_terms(const struct mer_policy *pol, double vot_s,
			       double price, double runtime, double wait,
			       unsigned k, double egress, double tsec,
			       double near_pen, double fixed_pol,
			       struct terms *t)
{
	const struct mer_weights *w = &pol->w;

	t->per_replica = price * runtime / 3600;
	t->compute = t->per_replica * k;
	t->policy = fixed_pol + near_pen * k;
	t->money = t->compute + egress;
	t->F = w->egress * egress + vot_s * w->transfer_time * tsec +
	       w->preference * fixed_pol;
	t->V = w->compute * t->per_replica +
	       vot_s * (w->wait * wait + w->runtime * runtime) +
	       w->preference * near_pen;
	t->total = t->F + t->V * k;
}

static void eval_site(struct ctx *c, size_t i, uint32_t s,
		      struct mer_site_brief *ev)
{
	const struct mer_fed *fed = c->fed;
	const struct mer_policy *pol = c->pol;
	const struct mer_site *site = &fed->sites[s];
	const struct mer_stage *st = &c->job->stages[i];
	struct sinfo *si = &c->si[i];
	const struct mer_weights *w = &pol->w;

	/* briefs come unzeroed: every field is written here */
	*ev = (struct mer_site_brief){.kind = -1, .aux = -1};
	si->u[s] = INF;
	si->um[s] = INF;
	if (si->fixed_site >= 0) {
		if ((int)s != si->fixed_site) {
			ev->aux = si->fixed_site;
			reject(ev, MER_R_FIXED);
			return;
		}
		/* Its cost is sunk; only where its outputs are matters. */
		ev->aux = (int32_t)si->R;
		si->u[s] = si->um[s] = 0;
		return;
	}
	if (c->e->sslow[s]) {
		if (site->health != MER_HEALTH_HEALTHY) {
			ev->aux = site->health;
			return reject(ev, MER_R_UNHEALTHY);
		}
		if (site->drained)
			return reject(ev, MER_R_DRAINED);
		if (pol->site_stale_after_s > 0 && site->last_heartbeat > 0 &&
		    (double)(c->in->now - site->last_heartbeat) >
			pol->site_stale_after_s) {
			ev->b = (double)(c->in->now - site->last_heartbeat);
			ev->a = pol->site_stale_after_s;
			return reject(ev, MER_R_STALE);
		}
		if ((site->ntenants_allow || site->ntenants_deny) &&
		    !tenant_allowed(site, c->job->tenant))
			return reject(ev, MER_R_TENANT);
	}
	if (c->site_ok && !c->site_ok[s])
		return reject(ev, MER_R_SITE_DENIED);
	uint32_t ridx = c->e->sridx[s];
	if (!si->region_ok[ridx]) {
		ev->aux = si->region_rule[ridx];
		return reject(ev, ev->aux < 0 ? MER_R_REGION_DENIED
					      : MER_R_RESIDENCY);
	}
	if (si->missing >= 0) {
		ev->aux = si->missing;
		return reject(ev, MER_R_INPUT_MISSING);
	}
	if (c->stages_blocked) {
		ev->a = (double)c->stages_blocked;
		return reject(ev, MER_R_QUOTA_STAGES);
	}

	/* No acceptable GPU model at all: the common rejection, decided
	 * from the site's kind mask without looking at its pools. */
	if (si->gkmask && !(c->e->kmask[s] & si->gkmask))
		return reject(ev, MER_R_GPU_MODEL);

	/* Capacity: the acceptable GPU model that fits and costs least. */
	struct fit best = {0}, fail = {0};
	int best_gk = -2, best_pre = 0, fail_r = 0;
	double best_key = INF, best_price = 0;
	unsigned want = si->R;
	int gang = st->gang || si->R > 1;
	const double *ph = c->e->sprice[s];
	if (si->ngk == 0) {
		fail.reason = MER_R_GPU_MODEL;
		fail_r = fail_rank(MER_R_GPU_MODEL);
	}
	for (int m = 0; m < si->ngk; m++) {
		int gk = si->gk[m];
		struct fit f;
		int with_pre = 0;
		if (gk >= 0 && !(c->e->kmask[s] & (1ULL << gk))) {
			if (fail_rank(MER_R_GPU_MODEL) > fail_r) {
				fail_r = fail_rank(MER_R_GPU_MODEL);
				memset(&fail, 0, sizeof(fail));
				fail.reason = MER_R_GPU_MODEL;
				fail.kind = -1;
			}
			continue;
		}
		fit_site(c, si, s, gk, want, gang, 0, &f);
		if (!f.units && c->can_preempt) {
			struct fit f2;
			fit_site(c, si, s, gk, want, gang, 1, &f2);
			if (f2.units) {
				f = f2;
				with_pre = 1;
			}
		}
		if (gk >= 0 && f.units) {
			double left = c->quota_left[gk];
			if (left < INF && f.units * si->gpu > left + 1e-9) {
				unsigned q =
				    (unsigned)floor(left / si->gpu + 1e-9);
				if (q == 0) {
					f.reason = MER_R_QUOTA;
					f.kind = gk;
					f.need = si->gpu;
					f.have = left;
				}
				f.units = q;
			}
		}
		if (!f.units) {
			if (fail_rank(f.reason) > fail_r) {
				fail_r = fail_rank(f.reason);
				fail = f;
			}
			continue;
		}
		double price = unit_price(ph, si->cpu, si->mem, si->gpu, gk);
		/* The first fit is taken whatever its key (keys are finite),
		 * so keys are only computed once a second model fits. */
		if (best_gk != -2) {
			if (best_key == INF)
				best_key = w->compute * best_price *
					       si->runtime / 3600 +
					   c->vot_s * w->wait * best.wait;
			double key = w->compute * price * si->runtime / 3600 +
				     c->vot_s * w->wait * f.wait;
			if (!(key < best_key))
				continue;
			best_key = key;
		}
		best = f;
		best_gk = gk;
		best_pre = with_pre;
		best_price = price;
	}
	if (best_gk == -2) {
		ev->kind = (int16_t)fail.kind;
		ev->a = fail.need;
		ev->b = fail.have;
		return reject(ev, fail.reason ? fail.reason : MER_R_CAPACITY);
	}

	unsigned k = best.units;
	double runtime = si->runtime, wait = best.wait;
	if (si->hn && si->hn[s] > 0) {
		double n = si->hn[s], prior = pol->history_prior_samples;
		if (!si->runtime_given && si->hrt[s] > 0)
			runtime = si->hrt[s];
		if (si->hwait[s] >= 0)
			wait = (prior * wait + n * si->hwait[s]) / (prior + n);
	}
	if (c->job->deadline > 0 &&
	    (double)c->in->now + wait + runtime > (double)c->job->deadline) {
		ev->a = (double)c->in->now + wait + runtime -
			(double)c->job->deadline;
		return reject(ev, MER_R_DEADLINE);
	}
	double per_replica = best_price * runtime / 3600;
	if (c->budget_left >= 0 && per_replica > c->budget_left + 1e-9) {
		ev->a = per_replica;
		ev->b = c->budget_left;
		return reject(ev, MER_R_BUDGET);
	}
	double egress, tsec;
	ext_terms(si->ext, si->next, s, c->e->scls[s], &egress, &tsec);
	double near_pen = 0;
	if (si->near_ok && !si->near_ok[ridx])
		near_pen = pol->near_miss_usd_per_replica_hour * runtime / 3600;
	double fixed_pol =
	    c->e->pref[s] + (best_pre ? pol->preemption_penalty_usd : 0);
	struct terms t;
	score_terms(pol, c->vot_s, best_price, runtime, wait, k, egress, tsec,
		    near_pen, fixed_pol, &t);

	/* Only what depends on capacity and history is kept; the other
	 * terms are rebuilt by mer_placement_eval when asked for. */
	ev->kind = (int16_t)best_gk;
	ev->preempts = (uint8_t)best_pre;
	ev->aux = (int32_t)k;
	ev->a = wait;
	ev->b = runtime;
	si->u[s] = t.total;
	si->um[s] = t.money;
	if (si->R > 1) {
		si->F[s] = t.F;
		si->V[s] = t.V;
		si->MF[s] = egress;
		si->MV[s] = per_replica;
		si->units[s] = k;
	}
}

/*
 * All sites for stage i. The common case (one replica, not a gang, no
 * history, deadline, budget or GPU quota in play, a healthy one-pool site
 * whose free capacity fits) is scored here inline; every other site goes
 * through eval_site, and so does any site this path is unsure of. The
 * inline path makes the same decisions with the same expressions, so the
 * results are the same bit for bit (checked by golden comparison).
 */
static void eval_stage(struct ctx *c, size_t i, struct mer_site_brief *br)
{
	const struct mer_engine *e = c->e;
	const struct mer_policy *pol = c->pol;
	const struct mer_weights *w = &pol->w;
	const struct mer_stage *st = &c->job->stages[i];
	struct sinfo *si = &c->si[i];
	size_t n = c->fed->nsites, nk = c->fed->nkinds;
	int simple = si->fixed_site < 0 && si->R == 1 && !st->gang && !si->hn &&
		     c->job->deadline <= 0 && c->budget_left < 0 &&
		     si->missing < 0 && !c->stages_blocked;

	for (int m = 0; simple && m < si->ngk; m++)
		if (si->gk[m] >= 0 && c->quota_left[si->gk[m]] < INF)
			simple = 0;
	if (!simple) {
		for (uint32_t s = 0; s < n; s++)
			eval_site(c, i, s, &br[s]);
		return;
	}
	const double cpu = si->cpu, mem = si->mem, gpu = si->gpu;
	const unsigned fabric = si->fabric;
	const double runtime = si->runtime, vot_s = c->vot_s;
	const uint64_t gkmask = si->gkmask;
	const int ngk = si->ngk, can_preempt = c->can_preempt;
	double *u = si->u, *um = si->um;
	for (uint32_t s = 0; s < n; s++) {
		uint32_t ridx = e->sridx[s];
		size_t p = e->pool0[s];
		if (e->sslow[s] || (c->site_ok && !c->site_ok[s]) ||
		    !si->region_ok[ridx] || e->pool0[s + 1] - p != 1) {
			eval_site(c, i, s, &br[s]);
			continue;
		}
		if (gkmask && !(e->kmask[s] & gkmask)) {
			br[s] = (struct mer_site_brief){
			    .reason = MER_R_GPU_MODEL, .kind = -1, .aux = -1};
			u[s] = um[s] = INF;
			continue;
		}
		const double *cp = &e->cap[p * nk];
		if ((fabric && !(e->pfab[p] & fabric)) ||
		    (mem > 0 && cp[MER_KIND_MEM] + 1e-9 < mem) ||
		    (cpu > 0 && cp[MER_KIND_CPU] + 1e-9 < cpu)) {
			eval_site(c, i, s, &br[s]);
			continue;
		}
		/* the models that fit with free capacity, cheapest key */
		const double *ph = e->sprice[s];
		double wait = e->pwait[p], best_key = INF, best_price = 0;
		int best_gk = -2, unsure = 0;
		for (int m = 0; m < ngk; m++) {
			int gk = si->gk[m];
			if (gk >= 0 && !(e->kmask[s] & (1ULL << gk)))
				continue;
			if (gk >= 0 && gpu > 0 && cp[gk] + 1e-9 < gpu) {
				/* preemption might make it fit */
				unsure |= can_preempt;
				continue;
			}
			double price = unit_price(ph, cpu, mem, gpu, gk);
			if (best_gk != -2) {
				if (best_key == INF)
					best_key = w->compute * best_price *
						       runtime / 3600 +
						   vot_s * w->wait * wait;
				double key =
				    w->compute * price * runtime / 3600 +
				    vot_s * w->wait * wait;
				if (!(key < best_key))
					continue;
				best_key = key;
			}
			best_gk = gk;
			best_price = price;
		}
		if (best_gk == -2 || unsure) {
			eval_site(c, i, s, &br[s]);
			continue;
		}
		double egress, tsec, near_pen = 0;
		ext_terms(si->ext, si->next, s, e->scls[s], &egress, &tsec);
		if (si->near_ok && !si->near_ok[ridx])
			near_pen = pol->near_miss_usd_per_replica_hour *
				   runtime / 3600;
		struct terms t;
		score_terms(pol, vot_s, best_price, runtime, wait, 1, egress,
			    tsec, near_pen, e->pref[s] + 0.0, &t);
		br[s] = (struct mer_site_brief){.kind = (int16_t)best_gk,
						.aux = 1,
						.a = wait,
						.b = runtime};
		u[s] = t.total;
		um[s] = t.money;
	}
}

/* Overflow between tiers: use a later tier only when the earlier ones
 * cannot take the stage or are overflow_factor times dearer. */
static void apply_tiers(struct ctx *c, size_t i)
{
	const struct mer_policy *pol = c->pol;
	struct sinfo *si = &c->si[i];
	struct mer_site_brief *evals = c->out->stages[i].brief;
	size_t n = c->fed->nsites, nt = pol->ntiers + 1;
	double best[17];

	if (pol->ntiers == 0 || si->fixed_site >= 0)
		return;
	for (size_t t = 0; t < nt; t++)
		best[t] = INF;
	for (size_t s = 0; s < n; s++) {
		if (evals[s].reason != MER_R_OK)
			continue;
		double per = si->u[s] / (evals[s].aux ? evals[s].aux : 1);
		size_t t = c->e->tier[s];
		if (per < best[t])
			best[t] = per;
	}
	size_t first = 0;
	while (first < nt && best[first] == INF)
		first++;
	if (first == nt)
		return;
	size_t allowed = first;
	double cur = best[first];
	for (size_t t = first + 1; t < nt; t++) {
		if (best[t] == INF)
			continue;
		if (cur > pol->overflow_factor * best[t]) {
			allowed = t;
			cur = fmin(cur, best[t]);
		} else {
			break;
		}
	}
	for (size_t s = 0; s < n; s++) {
		size_t t = c->e->tier[s];
		if (evals[s].reason != MER_R_OK || t <= allowed)
			continue;
		evals[s].reason = MER_R_TIER;
		evals[s].aux = (int32_t)first;
		evals[s].a = cur;
		evals[s].b = best[t];
		si->u[s] = si->um[s] = INF;
	}
}

static double pair_cost(const struct ctx *c, uint32_t a, uint32_t b,
			double bytes, const struct pw *pw)
{
	if (a == b || bytes <= 0)
		return 0;
	return pw->we * mer_fed_egress_usd(c->fed, a, b, bytes) +
	       pw->wt * mer_fed_transfer_s(c->fed, a, b, bytes);
}

struct cand {
	uint32_t s;
	double key;
};

static int cmp_cand(const void *x, const void *y)
{
	const struct cand *a = x, *b = y;

	if (a->key != b->key)
		return a->key < b->key ? -1 : 1;
	return a->s < b->s ? -1 : a->s > b->s;
}

/* Replicas that do not fit at a primary site spill onto the next sites in
 * order of per-replica cost; their cost joins the primary's score. */
static int expand_replicas(struct ctx *c, size_t i, const struct pw *pw)
{
	struct sinfo *si = &c->si[i];
	struct mer_site_brief *evals = c->out->stages[i].brief;
	struct mer_stage_expl *xp = c->out->stages[i].expl;
	size_t n = c->fed->nsites, nc = 0;
	double sum = 0;
	const struct pw money = {1, 0};

	if (si->R <= 1 || si->fixed_site >= 0)
		return 0;
	struct cand *cs = talloc(c, (n + 1) * sizeof(*cs));
	if (!cs)
		return MER_ENOMEM;
	for (uint32_t s = 0; s < n; s++) {
		if (evals[s].reason != MER_R_OK)
			continue;
		cs[nc].s = s;
		cs[nc].key = si->V[s] + si->F[s] / si->units[s];
		sum += si->units[s];
		nc++;
	}
	if (nc == 0)
		return 0;
	if (sum < si->R) {
		for (size_t k = 0; k < nc; k++) {
			struct mer_site_brief *ev = &evals[cs[k].s];
			ev->reason = MER_R_REPLICAS;
			ev->aux = -1;
			ev->a = si->R;
			ev->b = sum;
			si->u[cs[k].s] = si->um[cs[k].s] = INF;
		}
		return 0;
	}
	xp->spill = palloc(c, n * sizeof(double));
	xp->spill_m = palloc(c, n * sizeof(double));
	if (!xp->spill || !xp->spill_m)
		return MER_ENOMEM;
	qsort(cs, nc, sizeof(*cs), cmp_cand);
	for (size_t k = 0; k < nc; k++) {
		uint32_t t = cs[k].s;
		unsigned rem = si->R - si->units[t];
		double spill = 0, spill_m = 0;
		for (size_t j = 0; j < nc && rem > 0; j++) {
			uint32_t s = cs[j].s;
			if (s == t)
				continue;
			unsigned kk = si->units[s] < rem ? si->units[s] : rem;
			spill += si->F[s] + kk * si->V[s] +
				 pair_cost(c, t, s, si->in_bytes, pw);
			spill_m += si->MF[s] + kk * si->MV[s] +
				   pair_cost(c, t, s, si->in_bytes, &money);
			rem -= kk;
		}
		xp->spill[t] = spill;
		xp->spill_m[t] = spill_m;
		si->u[t] += spill;
		si->um[t] += spill_m;
	}
	return 0;
}

/* ---- joint choice ---- */

/*
 * Moving bytes from site a to a site of class k costs the same for every
 * site of k but a itself (DESIGN §4): out[k] = f(a, b, bytes) for a member
 * b != a of each class, computed by the very functions a per-site call
 * would use, so the values are bit for bit the same. Classes whose only
 * site is a are never looked up (s == a is handled by the caller).
 */
enum tbl_fn { TBL_PAIR, TBL_EGRESS, TBL_TRANSFER };

static void class_table(const struct ctx *c, uint32_t a, double bytes,
			const struct pw *pw, enum tbl_fn fn, double *out);

static double pair_cost(const struct ctx *c, uint32_t a, uint32_t b,
			double bytes, const struct pw *pw);

static void class_table(const struct ctx *c, uint32_t a, double bytes,
			const struct pw *pw, enum tbl_fn fn, double *out)
{
	const uint32_t *rep = c->e->cls_rep;

	for (size_t k = 0; k < c->fed->ncls; k++) {
		uint32_t b = rep[2 * k] != a ? rep[2 * k] : rep[2 * k + 1];
		if (b == NONE) {
			out[k] = 0;
			continue;
		}
		out[k] = fn == TBL_PAIR ? pair_cost(c, a, b, bytes, pw)
			 : fn == TBL_EGRESS
			     ? mer_fed_egress_usd(c->fed, a, b, bytes)
			     : mer_fed_transfer_s(c->fed, a, b, bytes);
	}
}

static double plan_total(const struct ctx *c, double *const *u,
			 const struct pw *pw, const uint32_t *a)
{
	double t = 0;

	for (size_t i = 0; i < c->job->nstages; i++)
		t += u[i][a[i]];
	for (size_t e = 0; e < c->nedges; e++)
		t += pair_cost(c, a[c->edges[e].p], a[c->edges[e].c],
			       c->edges[e].bytes, pw);
	return t;
}

/* The cost of stage i at site s given every other stage's site. */
static double local_cost(const struct ctx *c, double *const *u,
			 const struct pw *pw, const uint32_t *a, size_t i,
			 uint32_t s, int producers_only)
{
	double v = u[i][s];

	for (size_t k = 0; k < c->ninc[i] && v < INF; k++) {
		const struct edge *e = &c->edges[c->inc[i][k]];
		if (e->c == i)
			v += pair_cost(c, a[e->p], s, e->bytes, pw);
		else if (!producers_only)
			v += pair_cost(c, s, a[e->c], e->bytes, pw);
	}
	return v;
}

/* Stage by stage in dependency order, each at its best site given where
 * its producers went: the baseline the joint plan must never lose to. */
static int solve_greedy(struct ctx *c, double *const *u, const struct pw *pw,
			uint32_t *a)
{
	size_t n = c->fed->nsites, K = c->fed->ncls;
	const uint32_t *cls = c->e->scls;
	double *tbl = NULL;
	uint32_t *src = NULL;
	size_t cap = 0;

	for (size_t q = 0; q < c->job->nstages; q++) {
		size_t i = c->job->topo[q];
		double best = INF;
		uint32_t arg = 0;
		size_t np = 0;
		/* one class table per producer edge, in incidence order, so
		 * the sum below adds the same terms in the same order as
		 * local_cost(..., producers_only) */
		for (size_t k = 0; k < c->ninc[i]; k++)
			np += c->edges[c->inc[i][k]].c == i;
		if (np > cap) {
			cap = np;
			tbl = talloc(c, cap * K * sizeof(double));
			src = talloc(c, cap * sizeof(uint32_t));
			if (!tbl || !src)
				return MER_ENOMEM;
		}
		np = 0;
		for (size_t k = 0; k < c->ninc[i]; k++) {
			const struct edge *e = &c->edges[c->inc[i][k]];
			if (e->c != i)
				continue;
			src[np] = a[e->p];
			class_table(c, a[e->p], e->bytes, pw, TBL_PAIR,
				    tbl + np * K);
			np++;
		}
		for (uint32_t s = 0; s < n; s++) {
			if (u[i][s] == INF)
				continue;
			double v = u[i][s];
			for (size_t k = 0; k < np; k++)
				v += s == src[k] ? 0 : tbl[k * K + cls[s]];
			if (v < best) {
				best = v;
				arg = s;
			}
		}
		a[i] = arg;
	}
	return 0;
}

/* Coordinate descent from a: each move strictly lowers the total, so the
 * result is never worse than the start. */
static void solve_local(const struct ctx *c, double *const *u,
			const struct pw *pw, uint32_t *a)
{
	size_t n = c->fed->nsites;

	for (int pass = 0; pass < LOCAL_SEARCH_PASSES; pass++) {
		int moved = 0;
		for (size_t q = 0; q < c->job->nstages; q++) {
			size_t i = c->job->topo[q];
			double best = local_cost(c, u, pw, a, i, a[i], 0);
			uint32_t arg = a[i];
			for (uint32_t s = 0; s < n; s++) {
				if (u[i][s] == INF || s == a[i])
					continue;
				double v = local_cost(c, u, pw, a, i, s, 0);
				if (v < best - 1e-9 * fabs(best)) {
					best = v;
					arg = s;
				}
			}
			if (arg != a[i]) {
				a[i] = arg;
				moved = 1;
			}
		}
		if (!moved)
			break;
	}
}

/*
 * m(y) = min over x of F(x) + cost(edge, x, y) for every parent site y,
 * where x is the child's site. Sites of one class are interchangeable
 * apart from their own egress price, so the inner minimum runs over
 * classes: O(sites + classes^2) instead of O(sites^2). Ties go to the
 * lower site index, i.e. the site name first in order.
 */
static int message(struct ctx *c, const double *F, const struct edge *ed,
		   int child_is_producer, const struct pw *pw, double *m,
		   uint32_t *arg)
{
	const struct mer_fed *fed = c->fed;
	size_t n = fed->nsites, K = fed->ncls;
	double B = ed->bytes, egw = pw->we * B / 1e9;
	double *G = talloc(c, K * sizeof(double));
	double *H = talloc(c, K * sizeof(double));
	uint32_t *Ga = talloc(c, K * sizeof(uint32_t));
	uint32_t *Ha = talloc(c, K * sizeof(uint32_t));

	if (!G || !H || !Ga || !Ha)
		return MER_ENOMEM;
	for (size_t k = 0; k < K; k++) {
		G[k] = H[k] = INF;
		Ga[k] = Ha[k] = NONE;
	}
	const uint32_t *cls = c->e->scls;
	const double *seg = c->e->seg;
	for (uint32_t x = 0; x < n; x++) {
		if (F[x] == INF)
			continue;
		double v = F[x];
		if (child_is_producer && B > 0)
			v += egw * seg[x];
		size_t k = cls[x];
		if (v < G[k]) {
			G[k] = v;
			Ga[k] = x;
		}
	}
	/*
	 * H[k2] is the least (value, site) pair over classes k, an order-free
	 * minimum. Edge costs are >= 0 (weights, prices and times are), so
	 * v >= G[k]: scanning classes by rising G, the scan stops at the
	 * first G[k] above the best found, usually after a few classes.
	 */
	uint32_t *live = talloc(c, K * sizeof(uint32_t));
	size_t nlive = 0;
	if (!live)
		return MER_ENOMEM;
	for (size_t k = 0; k < K; k++) {
		if (G[k] == INF)
			continue;
		size_t j = nlive++;
		while (j > 0 && G[live[j - 1]] > G[k]) {
			live[j] = live[j - 1];
			j--;
		}
		live[j] = (uint32_t)k;
	}
	/* cost between classes k -> k2 for this edge, without the source
	 * site's own egress price (added per site): ca * eg + cb * spb */
	double ca = pw->we * B / 1e9, cb = pw->wt * B;
	const double *ceg = c->e->cls_eg, *cspb = c->e->cls_spb;
	for (size_t k2 = 0; k2 < K; k2++) {
		double h = INF;
		uint32_t ha = NONE;
		for (size_t q = 0; q < nlive; q++) {
			size_t k = live[q];
			if (G[k] > h)
				break;
			double v = G[k];
			if (B > 0) {
				size_t ix =
				    child_is_producer ? k * K + k2 : k2 * K + k;
				v += ca * ceg[ix] + cb * cspb[ix];
			}
			if (v < h || (v == h && Ga[k] < ha)) {
				h = v;
				ha = Ga[k];
			}
		}
		H[k2] = h;
		Ha[k2] = ha;
	}
	for (uint32_t y = 0; y < n; y++) {
		size_t k = cls[y];
		double moved = H[k];
		if (!child_is_producer && B > 0 && moved < INF)
			moved += egw * seg[y];
		double stay = F[y];
		if (stay < moved || (stay == moved && y <= Ha[k])) {
			m[y] = stay;
			arg[y] = y;
		} else {
			m[y] = moved;
			arg[y] = Ha[k];
		}
	}
	return 0;
}

static size_t uf_find(size_t *p, size_t x)
{
	while (p[x] != x) {
		p[x] = p[p[x]];
		x = p[x];
	}
	return x;
}

/* 1 when the dataflow graph, undirected, has no cycle. */
static int is_forest(struct ctx *c)
{
	size_t ns = c->job->nstages;
	size_t *p = talloc(c, ns * sizeof(size_t));

	if (!p)
		return 0;
	for (size_t i = 0; i < ns; i++)
		p[i] = i;
	for (size_t e = 0; e < c->nedges; e++) {
		size_t a = uf_find(p, c->edges[e].p);
		size_t b = uf_find(p, c->edges[e].c);
		if (a == b)
			return 0;
		p[a] = b;
	}
	return 1;
}

/* Exact minimum over a forest: messages from the leaves to each root,
 * then each stage takes the site that was best for its parent's site. */
static int solve_tree(struct ctx *c, double *const *u, const struct pw *pw,
		      uint32_t *a)
{
	size_t ns = c->job->nstages, n = c->fed->nsites, qn = 0;
	size_t *order = talloc(c, ns * sizeof(size_t));
	size_t *parent = talloc(c, ns * sizeof(size_t));
	size_t *pedge = talloc(c, ns * sizeof(size_t));
	uint8_t *seen = talloc(c, ns);
	double **F = talloc(c, ns * sizeof(double *));
	uint32_t **arg = talloc(c, ns * sizeof(uint32_t *));
	double *m = mer_arena_alloc_raw(&c->tmp, n * sizeof(double) + 1);
	int rv;

	if (!order || !parent || !pedge || !seen || !F || !arg || !m)
		return MER_ENOMEM;
	for (size_t q = 0; q < ns; q++) {
		size_t r = c->job->topo[q];
		if (seen[r])
			continue;
		seen[r] = 1;
		parent[r] = SIZE_MAX;
		size_t head = qn;
		order[qn++] = r;
		while (head < qn) {
			size_t i = order[head++];
			for (size_t k = 0; k < c->ninc[i]; k++) {
				size_t e = c->inc[i][k];
				size_t j = c->edges[e].p == i ? c->edges[e].c
							      : c->edges[e].p;
				if (seen[j])
					continue;
				seen[j] = 1;
				parent[j] = i;
				pedge[j] = e;
				order[qn++] = j;
			}
		}
	}
	for (size_t i = 0; i < ns; i++) {
		F[i] = mer_arena_alloc_raw(&c->tmp, n * sizeof(double) + 1);
		if (!F[i])
			return MER_ENOMEM;
		memcpy(F[i], u[i], n * sizeof(double));
	}
	for (size_t q = ns; q-- > 0;) {
		size_t ch = order[q], p = parent[ch];
		if (p == SIZE_MAX)
			continue;
		const struct edge *ed = &c->edges[pedge[ch]];
		arg[ch] =
		    mer_arena_alloc_raw(&c->tmp, n * sizeof(uint32_t) + 1);
		if (!arg[ch])
			return MER_ENOMEM;
		if ((rv = message(c, F[ch], ed, ed->p == ch, pw, m, arg[ch])))
			return rv;
		for (size_t s = 0; s < n; s++)
			F[p][s] += m[s];
	}
	for (size_t q = 0; q < ns; q++) {
		size_t i = order[q];
		if (parent[i] != SIZE_MAX) {
			a[i] = arg[i][a[parent[i]]];
			continue;
		}
		double best = INF;
		a[i] = 0;
		for (uint32_t s = 0; s < n; s++) {
			if (F[i][s] < best) {
				best = F[i][s];
				a[i] = s;
			}
		}
	}
	return 0;
}

/* Solves with unary costs u and pair weights pw into a; returns the method
 * name through *method and both totals. */
/* ---- in-job concurrency ----
 *
 * Every stage is filtered against the same free capacity, so two stages of
 * one job that may run at the same time (neither is an ancestor of the
 * other: two branches after one prep stage, the sides of a diamond) could
 * both be put on a site that holds only one. A chain never conflicts: a
 * stage starts only when its dependencies have finished. So a plan is
 * checked per site over every maximal set of mutually concurrent stages
 * placed there (maximal cliques of the concurrency graph, Bron-Kerbosch;
 * jobs are small), by reserving them one after the other on a scratch copy
 * of the site's capacity. Jobs whose stages are all ordered skip all this.
 */

static void reserve_at(struct ctx *c, size_t i, uint32_t s, int gk, unsigned k);

static int conc(const struct ctx *c, size_t i, size_t j)
{
	size_t ns = c->job->nstages;

	return i != j && !c->anc[i * ns + j] && !c->anc[j * ns + i];
}

static int prep_conc(struct ctx *c)
{
	const struct mer_job *job = c->job;
	size_t ns = job->nstages, n = c->fed->nsites, maxp = 0;

	c->has_conc = 0;
	if (ns < 2)
		return 0;
	c->anc = talloc(c, ns * ns);
	if (!c->anc)
		return MER_ENOMEM;
	memset(c->anc, 0, ns * ns);
	for (size_t q = 0; q < ns; q++) {
		size_t i = job->topo[q];
		const struct mer_stage *st = &job->stages[i];
		for (size_t k = 0; k < st->nafter; k++) {
			size_t d = st->deps[k];
			c->anc[i * ns + d] = 1;
			for (size_t j = 0; j < ns; j++)
				c->anc[i * ns + j] |= c->anc[d * ns + j];
		}
	}
	/* Fixed stages hold what they hold already (the snapshot counts a
	 * running stage; a finished one holds nothing). */
	for (size_t i = 0; i < ns && !c->has_conc; i++)
		for (size_t j = i + 1; j < ns && !c->has_conc; j++)
			c->has_conc = c->si[i].fixed_site < 0 &&
				      c->si[j].fixed_site < 0 && conc(c, i, j);
	if (!c->has_conc)
		return 0;
	c->rsorted = talloc(c, ns * sizeof(*c->rsorted));
	c->nrsorted = talloc(c, ns * sizeof(size_t));
	c->sh = talloc(c, ns * sizeof(*c->sh));
	c->nsh = talloc(c, ns * sizeof(size_t));
	c->sh_t = talloc(c, ns * sizeof(uint32_t));
	if (!c->rsorted || !c->nrsorted || !c->sh || !c->nsh || !c->sh_t)
		return MER_ENOMEM;
	for (size_t i = 0; i < ns; i++) {
		const struct sinfo *si = &c->si[i];
		const struct mer_site_brief *br = c->out->stages[i].brief;
		size_t nc = 0;
		c->sh_t[i] = NONE;
		c->nsh[i] = 0;
		c->rsorted[i] = NULL;
		c->nrsorted[i] = 0;
		if (si->R <= 1 || si->fixed_site >= 0) {
			c->sh[i] = talloc(c, sizeof(**c->sh));
			if (!c->sh[i])
				return MER_ENOMEM;
			continue;
		}
		/* the spill order of make_shares(): independent of the
		 * primary, so sorted once */
		struct cand *cs = talloc(c, (n + 1) * sizeof(*cs));
		c->sh[i] = talloc(c, (n + 1) * sizeof(**c->sh));
		if (!cs || !c->sh[i])
			return MER_ENOMEM;
		for (uint32_t s = 0; s < n; s++) {
			if (br[s].reason != MER_R_OK)
				continue;
			cs[nc].s = s;
			cs[nc].key = si->V[s] + si->F[s] / si->units[s];
			nc++;
		}
		qsort(cs, nc, sizeof(*cs), cmp_cand);
		c->rsorted[i] = cs;
		c->nrsorted[i] = nc;
	}
	for (uint32_t s = 0; s < n; s++)
		if (c->e->pool0[s + 1] - c->e->pool0[s] > maxp)
			maxp = c->e->pool0[s + 1] - c->e->pool0[s];
	c->save_n = maxp * c->fed->nkinds * (1 + MER_PRIO_COUNT);
	c->save = talloc(c, (c->save_n + 1) * sizeof(double));
	return c->save ? 0 : MER_ENOMEM;
}

/* Where stage i's replicas go with its primary at t: make_shares() without
 * the arena. Cached for the last primary asked for. */
static void shares_of(struct ctx *c, size_t i, uint32_t t)
{
	const struct sinfo *si = &c->si[i];
	const struct mer_site_brief *br = c->out->stages[i].brief;
	struct mer_replica_share *sh = c->sh[i];

	if (c->sh_t[i] == t)
		return;
	c->sh_t[i] = t;
	c->nsh[i] = 0;
	if (si->R <= 1 || si->fixed_site >= 0) {
		sh[0] = (struct mer_replica_share){t, si->R ? si->R : 1,
						   br[t].kind};
		c->nsh[i] = 1;
		return;
	}
	unsigned rem = si->R - si->units[t];
	sh[c->nsh[i]++] =
	    (struct mer_replica_share){t, si->units[t], br[t].kind};
	for (size_t j = 0; j < c->nrsorted[i] && rem > 0; j++) {
		uint32_t s = c->rsorted[i][j].s;
		if (s == t)
			continue;
		unsigned kk = si->units[s] < rem ? si->units[s] : rem;
		sh[c->nsh[i]++] = (struct mer_replica_share){s, kk, br[s].kind};
		rem -= kk;
	}
}

struct conc_item {
	size_t stage;
	unsigned k;
	int16_t gk;
	uint8_t pre;
};

struct conc_set {
	struct ctx *c;
	uint32_t s;
	const struct conc_item *it;
	size_t m;
	uint64_t adj[64];
	int fail;
};

static void save_site(struct ctx *c, uint32_t s, int restore)
{
	const struct mer_engine *e = c->e;
	size_t nk = c->fed->nkinds, p0 = e->pool0[s], p1 = e->pool0[s + 1];
	size_t pn = (p1 - p0) * nk, qn = (p1 - p0) * MER_PRIO_COUNT * nk;
	double *cap = &e->cap[p0 * nk];
	double *pre = &e->pre[p0 * MER_PRIO_COUNT * nk];

	if (restore) {
		memcpy(cap, c->save, pn * sizeof(double));
		memcpy(pre, c->save + pn, qn * sizeof(double));
	} else {
		memcpy(c->save, cap, pn * sizeof(double));
		memcpy(c->save + pn, pre, qn * sizeof(double));
	}
}

/* Do the items of mask (in job order) fit site s together? */
static int set_fits(struct conc_set *b, uint64_t mask)
{
	struct ctx *c = b->c;
	int ok = 1;

	save_site(c, b->s, 0);
	for (size_t v = 0; v < b->m && ok; v++) {
		if (!(mask & (1ULL << v)))
			continue;
		const struct conc_item *it = &b->it[v];
		const struct sinfo *si = &c->si[it->stage];
		int gang = c->job->stages[it->stage].gang || si->R > 1;
		struct fit f;
		fit_site(c, si, b->s, it->gk, it->k, gang, it->pre, &f);
		if (f.units < it->k)
			ok = 0;
		else
			reserve_at(c, it->stage, b->s, it->gk, it->k);
	}
	save_site(c, b->s, 1);
	if (!ok) {
		c->nbad = 0;
		c->bad_site = b->s;
		for (size_t v = 0; v < b->m; v++)
			if (mask & (1ULL << v))
				c->bad[c->nbad++] = b->it[v].stage;
	}
	return ok;
}

/* Bron-Kerbosch: every maximal clique of the concurrency graph. */
static void cliques(struct conc_set *b, uint64_t R, uint64_t P, uint64_t X)
{
	if (b->fail)
		return;
	if (!P && !X) {
		if ((R & (R - 1)) && !set_fits(b, R))
			b->fail = 1;
		return;
	}
	for (size_t v = 0; v < b->m && P && !b->fail; v++) {
		uint64_t bit = 1ULL << v;
		if (!(P & bit))
			continue;
		cliques(b, R | bit, P & b->adj[v], X & b->adj[v]);
		P &= ~bit;
		X |= bit;
	}
}

/*
 * 1 when some set of mutually concurrent stages of plan a (those in placed,
 * or all with placed NULL; only sets holding stage `with` if with >= 0) does
 * not fit site s; c->bad then names that set.
 */
static int site_conflict(struct ctx *c, const uint32_t *a,
			 const uint8_t *placed, uint32_t s, long with)
{
	size_t ns = c->job->nstages;
	struct conc_item it[64];
	struct conc_set b;
	size_t m = 0, wi = 0;
	int over = 0;

	for (size_t j = 0; j < ns; j++) {
		if ((placed && !placed[j]) || c->si[j].fixed_site >= 0)
			continue;
		if (with >= 0 && j != (size_t)with && !conc(c, j, (size_t)with))
			continue;
		shares_of(c, j, a[j]);
		for (size_t k = 0; k < c->nsh[j]; k++) {
			const struct mer_replica_share *r = &c->sh[j][k];
			if (r->site != s || r->replicas == 0)
				continue;
			if (m == 64) {
				over = 1;
				break;
			}
			if (j == (size_t)with)
				wi = m;
			it[m++] = (struct conc_item){
			    j, r->replicas, r->gpu_kind,
			    c->out->stages[j].brief[s].preempts};
		}
	}
	if (m < 2)
		return 0;
	memset(&b, 0, sizeof(b));
	b.c = c;
	b.s = s;
	b.it = it;
	b.m = m;
	if (over) {
		/* More than 64 stages on one site: all of them together,
		 * which is never less strict. */
		return !set_fits(&b, m == 64 ? ~0ULL : (1ULL << m) - 1);
	}
	for (size_t v = 0; v < m; v++)
		for (size_t w = 0; w < m; w++)
			if (conc(c, it[v].stage, it[w].stage))
				b.adj[v] |= 1ULL << w;
	if (with >= 0)
		cliques(&b, 1ULL << wi, b.adj[wi], 0);
	else
		cliques(&b, 0, m == 64 ? ~0ULL : (1ULL << m) - 1, 0);
	return b.fail;
}

/* 1 when stage i, as placed in a, is in a set that does not fit. */
static int stage_conflict(struct ctx *c, const uint32_t *a,
			  const uint8_t *placed, size_t i)
{
	if (c->si[i].fixed_site >= 0)
		return 0;
	/* i's shares stay cached while the sets are looked at: every
	 * lookup of i asks for the same primary a[i] */
	shares_of(c, i, a[i]);
	for (size_t k = 0; k < c->nsh[i]; k++)
		if (site_conflict(c, a, placed, c->sh[i][k].site, (long)i))
			return 1;
	return 0;
}

static int plan_conflict(struct ctx *c, const uint32_t *a)
{
	for (size_t i = 0; i < c->job->nstages; i++)
		if (stage_conflict(c, a, NULL, i))
			return 1;
	return 0;
}

/* Stage by stage, each at its best site given its producers and where the
 * concurrent stages before it went: the baseline when the plain one
 * over-commits. *ok = 0 when some stage has no site left. */
static int solve_greedy_rsv(struct ctx *c, double *const *u,
			    const struct pw *pw, uint32_t *a, int *ok)
{
	size_t ns = c->job->nstages, n = c->fed->nsites;
	uint8_t *placed = talloc(c, ns);
	double *v = talloc(c, n * sizeof(double));

	if (!placed || !v)
		return MER_ENOMEM;
	memset(placed, 0, ns);
	*ok = 1;
	for (size_t q = 0; q < ns; q++) {
		size_t i = c->job->topo[q];
		for (uint32_t s = 0; s < n; s++)
			v[s] = u[i][s] == INF
				   ? INF
				   : local_cost(c, u, pw, a, i, s, 1);
		placed[i] = 1;
		for (;;) {
			double best = INF;
			uint32_t arg = 0;
			for (uint32_t s = 0; s < n; s++) {
				if (v[s] < best) {
					best = v[s];
					arg = s;
				}
			}
			if (best == INF) {
				*ok = 0;
				c->nbad = 1;
				c->bad[0] = i;
				return 0;
			}
			a[i] = arg;
			if (!stage_conflict(c, a, placed, i))
				break;
			v[arg] = INF;
		}
	}
	return 0;
}

/* Moves stages out of sets that do not fit: each step the move (stage of
 * the set, new site) that raises the total least and leaves that stage in
 * no such set. 1 when the plan ends without conflicts. */
static int repair_plan(struct ctx *c, double *const *u, const struct pw *pw,
		       uint32_t *a)
{
	size_t ns = c->job->nstages, n = c->fed->nsites;

	for (size_t iter = 0; iter < 4 * ns + 8; iter++) {
		if (!plan_conflict(c, a))
			return 1;
		size_t bad[64], nb = c->nbad, bi = 0;
		uint32_t bs = NONE;
		double best = INF;
		memcpy(bad, c->bad, nb * sizeof(size_t));
		for (size_t x = 0; x < nb; x++) {
			size_t j = bad[x];
			uint32_t was = a[j];
			double old = local_cost(c, u, pw, a, j, was, 0);
			for (uint32_t s = 0; s < n; s++) {
				if (u[j][s] == INF || s == was)
					continue;
				double d =
				    local_cost(c, u, pw, a, j, s, 0) - old;
				if (!(d < best))
					continue;
				a[j] = s;
				if (!stage_conflict(c, a, NULL, j)) {
					best = d;
					bi = j;
					bs = s;
				}
				a[j] = was;
			}
		}
		if (bs == NONE)
			return 0;
		a[bi] = bs;
	}
	return !plan_conflict(c, a);
}

/* solve_local() over plans without conflicts: each move strictly lowers
 * the total and leaves the moved stage in no set that does not fit. */
static void descend_fitting(struct ctx *c, double *const *u,
			    const struct pw *pw, uint32_t *a)
{
	size_t n = c->fed->nsites;

	for (int pass = 0; pass < LOCAL_SEARCH_PASSES; pass++) {
		int moved = 0;
		for (size_t q = 0; q < c->job->nstages; q++) {
			size_t i = c->job->topo[q];
			uint32_t was = a[i], arg = was;
			double best = local_cost(c, u, pw, a, i, was, 0);
			if (c->si[i].fixed_site >= 0)
				continue;
			for (uint32_t s = 0; s < n; s++) {
				if (u[i][s] == INF || s == was)
					continue;
				double v = local_cost(c, u, pw, a, i, s, 0);
				if (!(v < best - 1e-9 * fabs(best)))
					continue;
				a[i] = s;
				if (!stage_conflict(c, a, NULL, i)) {
					best = v;
					arg = s;
				}
				a[i] = was;
			}
			if (arg != was) {
				a[i] = arg;
				moved = 1;
			}
		}
		/* Two concurrent stages may each block the other's better
		 * site: try trading sites. */
		for (size_t i = 0; i < c->job->nstages; i++) {
			for (size_t j = i + 1; j < c->job->nstages; j++) {
				uint32_t si = a[i], sj = a[j];
				if (si == sj || c->si[i].fixed_site >= 0 ||
				    c->si[j].fixed_site >= 0 ||
				    u[i][sj] == INF || u[j][si] == INF)
					continue;
				double t0 = plan_total(c, u, pw, a);
				a[i] = sj;
				a[j] = si;
				double t1 = plan_total(c, u, pw, a);
				if (t1 < t0 - 1e-9 * fabs(t0) &&
				    !stage_conflict(c, a, NULL, i) &&
				    !stage_conflict(c, a, NULL, j)) {
					moved = 1;
					continue;
				}
				a[i] = si;
				a[j] = sj;
			}
		}
		if (!moved)
			break;
	}
}

static int solve(struct ctx *c, double *const *u, const struct pw *pw,
		 uint32_t *a, const char **method, double *total,
		 double *greedy_total)
{
	size_t ns = c->job->nstages;
	uint32_t *g = talloc(c, ns * sizeof(uint32_t));
	int rv;

	if (!g)
		return MER_ENOMEM;
	if ((rv = solve_greedy(c, u, pw, g)))
		return rv;
	memcpy(a, g, ns * sizeof(uint32_t));
	int g_ok = 1, clash = c->has_conc && plan_conflict(c, g);
	if (clash) {
		/* The baseline gets the same in-job reservation as the
		 * joint plan, so that the comparison stays fair. */
		if ((rv = solve_greedy_rsv(c, u, pw, g, &g_ok)))
			return rv;
		if (g_ok)
			memcpy(a, g, ns * sizeof(uint32_t));
	}
	*greedy_total = plan_total(c, u, pw, g);
	if (ns == 1 || c->nedges == 0) {
		*method = "independent";
	} else if (is_forest(c)) {
		int chain = 1;
		for (size_t i = 0; i < ns; i++)
			chain &= c->ninc[i] <= 2;
		*method = chain ? "chain-dp" : "tree-dp";
		if ((rv = solve_tree(c, u, pw, a)))
			return rv;
	} else {
		*method = "local-search";
		solve_local(c, u, pw, a);
	}
	*total = plan_total(c, u, pw, a);
	int bad = c->has_conc && plan_conflict(c, a);
	if (clash || bad) {
		/* Repair the joint plan, and improve the reserved baseline
		 * too; keep the better. Both only move to plans that fit. */
		int fixed = !bad || repair_plan(c, u, pw, a);
		if (fixed)
			descend_fitting(c, u, pw, a);
		if (g_ok) {
			uint32_t *h = talloc(c, ns * sizeof(uint32_t));
			if (!h)
				return MER_ENOMEM;
			memcpy(h, g, ns * sizeof(uint32_t));
			descend_fitting(c, u, pw, h);
			if (!fixed ||
			    plan_total(c, u, pw, h) < plan_total(c, u, pw, a))
				memcpy(a, h, ns * sizeof(uint32_t));
		} else if (!fixed) {
			c->conc_fail = 1;
			return 0;
		}
		*total = plan_total(c, u, pw, a);
	}
	if (!g_ok)
		*greedy_total = *total; /* the only plan that fits */
	/* Rounding can make an exact optimum look a hair worse than the
	 * greedy plan; never return the worse of the two. */
	if (*total > *greedy_total) {
		memcpy(a, g, ns * sizeof(uint32_t));
		*total = *greedy_total;
	}
	return 0;
}

/* ---- setup, results, reservations ---- */

static int setup(struct ctx *c)
{
	const struct mer_fed *fed = c->fed;
	const struct mer_job *job = c->job;
	const struct mer_place_input *in = c->in;
	size_t n = fed->nsites, nr = fed->nregions, nk = fed->nkinds;

	c->vot_s = c->pol->vot_usd_hour[job->priority] / 3600.0;
	for (int cl = 0; cl < MER_PRIO_COUNT; cl++)
		c->can_preempt |= c->pol->preempt[job->priority][cl];
	c->tp = mer_policy_tenant(c->pol, job->tenant);
	c->rt = round_tenant(c->e, job->tenant, 0);
	c->quota_left = talloc(c, nk * sizeof(double));
	c->region_job = talloc(c, nr);
	if (!c->quota_left || !c->region_job)
		return MER_ENOMEM;
	for (size_t k = 0; k < nk; k++)
		c->quota_left[k] = INF;
	for (size_t q = 0; c->tp && q < c->tp->ngpus; q++) {
		char kind[80];
		snprintf(kind, sizeof(kind), "gpu:%s", c->tp->gpus[q].model);
		int k = mer_fed_kind_index(fed, kind);
		if (k < 0)
			continue;
		double used = c->rt ? c->rt->gpus[k] : 0;
		for (size_t j = 0; in->usage && j < in->usage->ngpus; j++)
			if (strcmp(in->usage->gpus[j].model,
				   c->tp->gpus[q].model) == 0)
				used += in->usage->gpus[j].gpus;
		c->quota_left[k] = fmax(0, c->tp->gpus[q].gpus - used);
	}
	if (c->tp && c->tp->concurrent_stages >= 0) {
		double now =
		    (in->usage ? (double)in->usage->concurrent_stages : 0) +
		    (c->rt ? c->rt->stages : 0);
		if (now + 1 > (double)c->tp->concurrent_stages)
			c->stages_blocked = (int)now;
	}
	c->budget_left = job->budget_usd;
	if (c->tp && c->tp->budget_usd >= 0) {
		double left = c->tp->budget_usd -
			      (in->usage ? in->usage->spent_usd : 0) -
			      (c->rt ? c->rt->spent : 0);
		left = fmax(0, left);
		if (c->budget_left < 0 || left < c->budget_left)
			c->budget_left = left;
	}
	for (uint32_t r = 0; r < nr; r++) {
		int ok = 1;
		if (job->nregions_allow) {
			ok = 0;
			for (size_t k = 0; k < job->nregions_allow && !ok; k++)
				ok = strcmp(job->regions_allow[k],
					    fed->regions[r]) == 0;
		}
		for (size_t k = 0; k < job->nregions_deny && ok; k++)
			ok = strcmp(job->regions_deny[k], fed->regions[r]) != 0;
		c->region_job[r] = (uint8_t)ok;
	}
	if (job->nsites_allow || job->nsites_deny) {
		c->site_ok = talloc(c, n);
		if (!c->site_ok)
			return MER_ENOMEM;
		memset(c->site_ok, job->nsites_allow ? 0 : 1, n);
		for (size_t k = 0; k < job->nsites_allow; k++) {
			int s = mer_fed_site_index(fed, job->sites_allow[k]);
			if (s >= 0)
				c->site_ok[s] = 1;
		}
		for (size_t k = 0; k < job->nsites_deny; k++) {
			int s = mer_fed_site_index(fed, job->sites_deny[k]);
			if (s >= 0)
				c->site_ok[s] = 0;
		}
	}
	return 0;
}

static int alloc_stage_arrays(struct ctx *c, size_t i)
{
	struct sinfo *si = &c->si[i];
	size_t n = c->fed->nsites;

	/* written for every site by eval_site: no need to zero them */
	/* u becomes the stage's totals, kept by the placement */
	si->u = mer_arena_alloc_raw(&c->out->arena, n * sizeof(double) + 1);
	si->um = mer_arena_alloc_raw(&c->tmp, n * sizeof(double) + 1);
	if (!si->u || !si->um)
		return MER_ENOMEM;
	if (si->R > 1) {
		si->F = talloc(c, n * sizeof(double));
		si->V = talloc(c, n * sizeof(double));
		si->MF = talloc(c, n * sizeof(double));
		si->MV = talloc(c, n * sizeof(double));
		si->units = talloc(c, n * sizeof(unsigned));
		if (!si->F || !si->V || !si->MF || !si->MV || !si->units)
			return MER_ENOMEM;
	}
	return 0;
}

static int build_incidence(struct ctx *c)
{
	size_t ns = c->job->nstages;

	c->inc = talloc(c, ns * sizeof(size_t *));
	c->ninc = talloc(c, ns * sizeof(size_t));
	if (!c->inc || !c->ninc)
		return MER_ENOMEM;
	for (size_t i = 0; i < ns; i++) {
		c->inc[i] = talloc(c, (c->nedges + 1) * sizeof(size_t));
		if (!c->inc[i])
			return MER_ENOMEM;
	}
	for (size_t e = 0; e < c->nedges; e++) {
		size_t p = c->edges[e].p, ch = c->edges[e].c;
		c->inc[p][c->ninc[p]++] = e;
		c->inc[ch][c->ninc[ch]++] = e;
	}
	return 0;
}

static void summarize_reasons(const struct mer_stage_result *r, char *buf,
			      size_t len, const char *lead)
{
	size_t o = 0;
	int w = snprintf(buf, len, "%s", lead);

	if (w < 0)
		return;
	o = (size_t)w;
	for (int k = 1; k < MER_R_COUNT && o < len; k++) {
		if (!r->nreason[k])
			continue;
		w = snprintf(buf + o, len - o, " %s=%zu", mer_reason_name(k),
			     r->nreason[k]);
		if (w < 0)
			break;
		o += (size_t)w;
	}
}

/* The replicas of stage i with primary t, as the score assumed them. */
static int make_shares(struct ctx *c, size_t i, uint32_t t)
{
	struct sinfo *si = &c->si[i];
	struct mer_stage_result *r = &c->out->stages[i];
	size_t n = c->fed->nsites;
	struct mer_arena *A = &c->out->arena;

	if (si->R <= 1 || si->fixed_site >= 0) {
		r->shares = mer_arena_alloc(A, sizeof(*r->shares));
		if (!r->shares)
			return MER_ENOMEM;
		r->shares[0] =
		    (struct mer_replica_share){t, si->R, r->brief[t].kind};
		r->nshares = 1;
		return 0;
	}
	struct cand *cs = talloc(c, (n + 1) * sizeof(*cs));
	size_t nc = 0;
	if (!cs)
		return MER_ENOMEM;
	for (uint32_t s = 0; s < n; s++) {
		if (r->brief[s].reason != MER_R_OK)
			continue;
		cs[nc].s = s;
		cs[nc].key = si->V[s] + si->F[s] / si->units[s];
		nc++;
	}
	qsort(cs, nc, sizeof(*cs), cmp_cand);
	r->shares = mer_arena_alloc(A, (nc + 1) * sizeof(*r->shares));
	if (!r->shares)
		return MER_ENOMEM;
	unsigned rem = si->R - si->units[t];
	r->shares[r->nshares++] =
	    (struct mer_replica_share){t, si->units[t], r->brief[t].kind};
	for (size_t j = 0; j < nc && rem > 0; j++) {
		if (cs[j].s == t)
			continue;
		unsigned kk =
		    si->units[cs[j].s] < rem ? si->units[cs[j].s] : rem;
		r->shares[r->nshares++] = (struct mer_replica_share){
		    cs[j].s, kk, r->brief[cs[j].s].kind};
		rem -= kk;
	}
	return 0;
}

/* Takes up to *rem of kind k from pool p: free shared capacity, or with
 * pre, capacity held by classes this job may preempt. */
static void take(struct ctx *c, size_t p, int k, int pre, double *rem)
{
	struct mer_engine *e = c->e;
	size_t nk = c->fed->nkinds;

	if (!pre) {
		double *cap = &e->cap[p * nk + (size_t)k];
		double from = fmin(*cap, *rem);
		*cap -= from;
		*rem -= from;
		return;
	}
	for (int cl = MER_PRIO_COUNT - 1; cl >= 0 && *rem > 0; cl--) {
		if (!c->pol->preempt[c->job->priority][cl])
			continue;
		double *pr =
		    &e->pre[(p * MER_PRIO_COUNT + (size_t)cl) * nk + (size_t)k];
		double f = fmin(*pr, *rem);
		*pr -= f;
		*rem -= f;
	}
}

/*
 * Holds k replicas of stage i at site s for the rest of the round: free
 * capacity of every pool first (in wait order), then preemptible capacity.
 * Which pool a gang lands in is the site scheduler's business; the round
 * only needs the site's totals to go down. Stages of one job that run one
 * after the other were checked against the same capacity (concurrent ones
 * together, see "in-job concurrency"), so what one takes may already be
 * gone; it is still taken.
 */
static void reserve_at(struct ctx *c, size_t i, uint32_t s, int gk, unsigned k)
{
	struct mer_engine *e = c->e;
	const struct sinfo *si = &c->si[i];
	unsigned fabric = c->job->stages[i].fabric;
	const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
	const double need1[3] = {si->cpu, si->mem, si->gpu};

	for (int x = 0; x < 3; x++) {
		double rem = need1[x] * k;
		if (kinds[x] < 0)
			continue;
		for (int pre = 0; pre < 2 && rem > 0; pre++) {
			for (size_t q = e->pool0[s];
			     q < e->pool0[s + 1] && rem > 0; q++) {
				size_t p = e->porder[q];
				if (pool_fits_fabric(si, e->pools[p], fabric))
					take(c, p, kinds[x], pre, &rem);
			}
		}
	}
}

static int reserve(struct ctx *c)
{
	struct mer_placement *out = c->out;
	struct round_tenant *rt = round_tenant(c->e, c->job->tenant, 1);

	if (!rt)
		return MER_ENOMEM;
	for (size_t i = 0; i < out->nstages; i++) {
		struct mer_stage_result *r = &out->stages[i];
		if (r->status != MER_STAGE_PLACED)
			continue;
		for (size_t k = 0; k < r->nshares; k++) {
			int gk = r->shares[k].gpu_kind;
			reserve_at(c, i, r->shares[k].site, gk,
				   r->shares[k].replicas);
			if (gk >= 0)
				rt->gpus[gk] +=
				    c->si[i].gpu * r->shares[k].replicas;
		}
		rt->stages += 1;
	}
	rt->spent += out->money_usd;
	return 0;
}

static int explain_choice(struct ctx *c, size_t i, const uint32_t *a,
			  const struct pw *pw)
{
	struct mer_stage_result *r = &c->out->stages[i];
	struct mer_stage_expl *xp = r->expl;
	size_t n = c->fed->nsites, K = c->fed->ncls, np = 0;
	const uint32_t *cls = c->e->scls;
	const struct mer_site_brief *br = r->brief;
	double *tot = r->totals;
	uint32_t cond_best = a[i];
	double cond = INF;

	/* Per producer edge (incidence order), the weighted cost of moving
	 * its outputs from the producer's site to each class: looked up per
	 * site below instead of recomputed. The placement keeps the sites
	 * and bytes so that mer_placement_eval can split the terms. */
	for (size_t k = 0; k < c->ninc[i]; k++)
		np += c->edges[c->inc[i][k]].c == i;
	double *tp = talloc(c, (np * K + 1) * sizeof(double));
	xp->psite = palloc(c, (np + 1) * sizeof(uint32_t));
	xp->pbytes = palloc(c, (np + 1) * sizeof(double));
	if (!tp || !xp->psite || !xp->pbytes)
		return MER_ENOMEM;
	np = 0;
	for (size_t k = 0; k < c->ninc[i]; k++) {
		const struct edge *e = &c->edges[c->inc[i][k]];
		if (e->c != i)
			continue;
		xp->psite[np] = a[e->p];
		xp->pbytes[np] = e->bytes;
		class_table(c, a[e->p], e->bytes, pw, TBL_PAIR, tp + np * K);
		np++;
	}
	xp->np = np;
	xp->explained = 1;
	const uint32_t *src = xp->psite;
	const double *bytes = xp->pbytes;
	/* Each site's total includes moving the producers' outputs from
	 * where the producers were placed: pair_cost(), i.e. the weighted
	 * egress plus transfer time, added in the same order. */
	for (uint32_t s = 0; s < n; s++) {
		if (br[s].reason != MER_R_OK)
			continue;
		double v = tot[s];
		for (size_t k = 0; k < np; k++) {
			int same = s == src[k] || bytes[k] <= 0;
			v += same ? 0 : tp[k * K + cls[s]];
		}
		tot[s] = v;
		if (v < cond) {
			cond = v;
			cond_best = s;
		}
	}
	/* Did a stage of the job that can run at the same time keep this
	 * one from its best site? (Only asked when the job has such
	 * stages and the site differs.) */
	size_t other = SIZE_MAX;
	if (c->has_conc && cond_best != a[i] && r->status != MER_STAGE_FIXED) {
		size_t ns = c->job->nstages;
		uint32_t *b = talloc(c, ns * sizeof(uint32_t));
		if (!b)
			return MER_ENOMEM;
		memcpy(b, a, ns * sizeof(uint32_t));
		b[i] = cond_best;
		if (stage_conflict(c, b, NULL, i))
			for (size_t k = 0; k < c->nbad && other == SIZE_MAX;
			     k++)
				if (c->bad[k] != i)
					other = c->bad[k];
	}
	if (r->status == MER_STAGE_FIXED)
		snprintf(r->note, sizeof(r->note), "fixed: %s at %s",
			 c->si[i].finished ? "finished" : "running",
			 c->fed->sites[a[i]].name);
	else if (other != SIZE_MAX)
		snprintf(r->note, sizeof(r->note),
			 "capacity: %s scores %.2f but cannot hold it beside "
			 "stage \"%s\", which can run at the same time; %s "
			 "scores %.2f",
			 c->fed->sites[cond_best].name, cond,
			 c->job->stages[other].name, c->fed->sites[a[i]].name,
			 tot[a[i]]);
	else if (cond_best == a[i])
		snprintf(r->note, sizeof(r->note), "best of %zu feasible sites",
			 r->nfeasible);
	else
		snprintf(r->note, sizeof(r->note),
			 "chosen for the joint plan: %s scores %.2f alone but "
			 "its outputs cost more to move on; %s scores %.2f",
			 c->fed->sites[cond_best].name, cond,
			 c->fed->sites[a[i]].name, tot[a[i]]);
	return 0;
}

static double makespan(const struct ctx *c, const uint32_t *a)
{
	size_t ns = c->job->nstages;
	double *fin = calloc(ns, sizeof(double)), span = 0;

	if (!fin)
		return 0;
	for (size_t q = 0; q < ns; q++) {
		size_t i = c->job->topo[q];
		const struct mer_stage *st = &c->job->stages[i];
		struct mer_site_eval ev;
		double start = 0;
		for (size_t k = 0; k < st->nafter; k++)
			start = fmax(start, fin[st->deps[k]]);
		if (c->si[i].fixed_site < 0) {
			mer_placement_eval(c->out, i, a[i], &ev);
			fin[i] =
			    start + ev.transfer_s + ev.wait_s + ev.runtime_s;
		}
		span = fmax(span, fin[i]);
	}
	free(fin);
	return span;
}

static int finish(struct ctx *c, const uint32_t *a, const struct pw *pw)
{
	struct mer_placement *out = c->out;
	int rv;

	/* every site first: a stage's terms name its producers' sites */
	for (size_t i = 0; i < out->nstages; i++)
		out->stages[i].site = (int32_t)a[i];
	for (size_t i = 0; i < out->nstages; i++) {
		struct mer_stage_result *r = &out->stages[i];
		const struct mer_site_brief *ev = &r->brief[a[i]];
		r->status = c->si[i].fixed_site >= 0 ? MER_STAGE_FIXED
						     : MER_STAGE_PLACED;
		r->gpu_kind = ev->kind;
		r->preempts = ev->preempts;
		if ((rv = make_shares(c, i, a[i])))
			return rv;
		if ((rv = explain_choice(c, i, a, pw)))
			return rv;
		if (r->status == MER_STAGE_PLACED) {
			struct mer_site_eval full;
			mer_placement_eval(out, i, a[i], &full);
			out->money_usd += full.money_usd;
		}
	}
	out->complete = 1;
	out->makespan_s = makespan(c, a);
	if (c->job->deadline > 0 &&
	    (double)c->in->now + out->makespan_s > (double)c->job->deadline)
		snprintf(out->note, sizeof(out->note),
			 "deadline at risk: the plan ends %.0f s after it",
			 (double)c->in->now + out->makespan_s -
			     (double)c->job->deadline);
	return 0;
}

static void leave_pending(struct ctx *c, const char *why)
{
	struct mer_placement *out = c->out;

	out->complete = 0;
	out->method = "none";
	snprintf(out->note, sizeof(out->note), "%s", why);
	for (size_t i = 0; i < out->nstages; i++) {
		struct mer_stage_result *r = &out->stages[i];
		if (c->si[i].fixed_site >= 0) {
			r->status = MER_STAGE_FIXED;
			r->site = c->si[i].fixed_site;
			snprintf(r->note, sizeof(r->note), "fixed: %s at %s",
				 c->si[i].finished ? "finished" : "running",
				 c->fed->sites[r->site].name);
			continue;
		}
		r->status = MER_STAGE_PENDING;
		r->site = -1;
		r->gpu_kind = -1;
		if (r->nfeasible == 0)
			summarize_reasons(r, r->note, sizeof(r->note),
					  "no site fits:");
		else
			snprintf(r->note, sizeof(r->note), "%s", why);
	}
}

static int resolve_fixed(struct ctx *c, char *why, size_t len)
{
	const struct mer_place_input *in = c->in;

	for (size_t i = 0; i < c->job->nstages; i++)
		c->si[i].fixed_site = -1;
	for (size_t k = 0; k < in->nfixed; k++) {
		int i = mer_job_stage_index(c->job, in->fixed[k].stage);
		int s = mer_fed_site_index(c->fed, in->fixed[k].site);
		if (i < 0 || s < 0) {
			snprintf(why, len, "fixed[%zu]: unknown %s \"%s\"", k,
				 i < 0 ? "stage" : "site",
				 i < 0 ? in->fixed[k].stage
				       : in->fixed[k].site);
			return MER_EINVAL;
		}
		c->si[i].fixed_site = s;
		c->si[i].finished = in->fixed[k].finished;
	}
	return 0;
}

/* No plan keeps the job's concurrent stages within capacity. */
static void conc_pending(struct ctx *c, char *why, size_t len)
{
	size_t i = c->nbad ? c->bad[0] : 0;

	snprintf(why, len,
		 "pending: capacity: no site is left for stage \"%s\" beside "
		 "the stages of the job that can run at the same time",
		 c->job->stages[i].name);
	leave_pending(c, why);
}

static int place(struct ctx *c, int do_reserve)
{
	const struct mer_job *job = c->job;
	const struct mer_policy *pol = c->pol;
	size_t ns = job->nstages, n = c->fed->nsites;
	struct mer_placement *out = c->out;
	char why[320];
	int rv;

	c->si = talloc(c, ns * sizeof(*c->si));
	c->edges =
	    talloc(c, (ns * MER_JOB_MAX_DATASETS + 1) * sizeof(*c->edges));
	if (!c->si || !c->edges)
		return MER_ENOMEM;
	if ((rv = resolve_fixed(c, why, sizeof(why))) || (rv = setup(c)))
		return rv;
	for (size_t q = 0; q < ns; q++) {
		size_t i = job->topo[q];
		if ((rv = prep_stage(c, i)) || (rv = alloc_stage_arrays(c, i)))
			return rv;
	}
	if ((rv = build_incidence(c)))
		return rv;
	struct pw pw = {pol->w.egress, c->vot_s * pol->w.transfer_time};
	for (size_t i = 0; i < ns; i++) {
		struct mer_stage_result *r = &out->stages[i];
		struct sinfo *si = &c->si[i];
		struct mer_stage_expl *xp = palloc(c, sizeof(*xp));
		r->brief = mer_arena_alloc_raw(&out->arena,
					       (n + 1) * sizeof(*r->brief));
		if (!r->brief || !xp)
			return MER_ENOMEM;
		memset(&r->brief[n], 0, sizeof(*r->brief));
		xp->fixed = si->fixed_site >= 0;
		xp->ext = si->ext;
		xp->next = si->next;
		xp->near_ok = si->near_ok;
		r->expl = xp;
		r->totals = si->u;
		eval_stage(c, i, r->brief);
		apply_tiers(c, i);
		if ((rv = expand_replicas(c, i, &pw)))
			return rv;
		for (uint32_t s = 0; s < n; s++)
			r->nreason[r->brief[s].reason]++;
		r->nfeasible = r->nreason[MER_R_OK];
	}
	const char *blocker = NULL;
	for (size_t i = 0; i < ns && !blocker; i++)
		if (out->stages[i].nfeasible == 0)
			blocker = job->stages[i].name;
	if (blocker) {
		snprintf(why, sizeof(why),
			 "pending: stage \"%s\" has no feasible site", blocker);
		leave_pending(c, why);
		return 0;
	}

	double **u = talloc(c, ns * sizeof(double *));
	double **um = talloc(c, ns * sizeof(double *));
	uint32_t *a = talloc(c, ns * sizeof(uint32_t));
	if (!u || !um || !a)
		return MER_ENOMEM;
	for (size_t i = 0; i < ns; i++) {
		u[i] = c->si[i].u;
		um[i] = c->si[i].um;
	}
	if ((rv = prep_conc(c)))
		return rv;
	if ((rv = solve(c, u, &pw, a, &out->method, &out->total,
			&out->stage_by_stage_total)))
		return rv;
	if (c->conc_fail) {
		conc_pending(c, why, sizeof(why));
		return 0;
	}
	if (c->budget_left >= 0) {
		const struct pw money = {1, 0};
		double m = plan_total(c, um, &money, a);
		if (m > c->budget_left + 1e-9) {
			/* The least-objective plan is over budget; the
			 * cheapest plan may not be. */
			uint32_t *b = talloc(c, ns * sizeof(uint32_t));
			const char *meth;
			double mt, mg;
			if (!b)
				return MER_ENOMEM;
			if ((rv = solve(c, um, &money, b, &meth, &mt, &mg)))
				return rv;
			if (c->conc_fail) {
				conc_pending(c, why, sizeof(why));
				return 0;
			}
			if (mt > c->budget_left + 1e-9) {
				snprintf(why, sizeof(why),
					 "budget: the cheapest plan costs "
					 "%.2f USD, %.2f USD left",
					 mt, c->budget_left);
				leave_pending(c, why);
				return 0;
			}
			/* The objective is now money, for the joint plan
			 * and its stage-by-stage baseline alike. */
			memcpy(a, b, ns * sizeof(uint32_t));
			out->total = mt;
			out->stage_by_stage_total = mg;
			out->method = meth;
			snprintf(out->note, sizeof(out->note),
				 "budget: the best plan costs %.2f USD, %.2f "
				 "USD left; using the cheapest plan (totals "
				 "are in USD)",
				 m, c->budget_left);
		}
	}
	if ((rv = finish(c, a, &pw)))
		return rv;
	if (do_reserve)
		return reserve(c);
	return 0;
}

int mer_engine_place(struct mer_engine *e, const struct mer_place_input *in,
		     int do_reserve, struct mer_placement **out)
{
	struct ctx c;
	struct mer_arena arena = {0};
	struct mer_placement *p;
	int rv;

	*out = NULL;
	if (!e || !in || !in->job)
		return MER_EINVAL;
	p = mer_arena_alloc(&arena, sizeof(*p));
	if (!p)
		return MER_ENOMEM;
	p->arena = arena;
	p->fed = e->fed;
	p->pol = e->pol;
	p->job = in->job;
	p->nstages = in->job->nstages;
	p->method = "none";
	p->stages = mer_arena_alloc(&p->arena, p->nstages * sizeof(*p->stages));
	if (!p->stages) {
		mer_placement_free(p);
		return MER_ENOMEM;
	}
	memset(&c, 0, sizeof(c));
	c.tmp = e->scratch; /* reuses the blocks of earlier calls */
	c.e = e;
	c.fed = e->fed;
	c.pol = e->pol;
	c.in = in;
	c.job = in->job;
	c.out = p;
	rv = place(&c, do_reserve);
	mer_arena_reset(&c.tmp);
	e->scratch = c.tmp;
	if (rv) {
		mer_placement_free(p);
		return rv;
	}
	*out = p;
	return 0;
}

int mer_engine_place_batch(struct mer_engine *e,
			   const struct mer_place_input *in, size_t n,
			   struct mer_placement **out)
{
	for (size_t i = 0; i < n; i++) {
		int rv = mer_engine_place(e, &in[i], 1, &out[i]);
		if (rv) {
			while (i-- > 0) {
				mer_placement_free(out[i]);
				out[i] = NULL;
			}
			return rv;
		}
	}
	return 0;
}

void mer_placement_free(struct mer_placement *p)
{
	if (!p)
		return;
	struct mer_arena a = p->arena;
	mer_arena_free(&a);
}

void mer_placement_eval(const struct mer_placement *p, size_t stage,
			uint32_t site, struct mer_site_eval *ev)
{
	const struct mer_stage_result *r = &p->stages[stage];
	const struct mer_site_brief *b = &r->brief[site];
	const struct mer_stage_expl *xp = r->expl;
	const struct mer_fed *fed = p->fed;
	const struct mer_policy *pol = p->pol;
	const struct mer_site *st = &fed->sites[site];

	*ev = (struct mer_site_eval){.site = site,
				     .reason = b->reason,
				     .preempts = b->preempts,
				     .kind = b->kind,
				     .aux = -1};
	if (b->reason != MER_R_OK) {
		ev->aux = b->aux;
		ev->need = b->a;
		ev->have = b->b;
		return;
	}
	ev->replicas = (unsigned)b->aux;
	if (!xp->fixed) {
		/* The engine's own formula over the same inputs: the same
		 * bits as when it scored the site. */
		const struct mer_stage *js = &p->job->stages[stage];
		double vot_s = pol->vot_usd_hour[p->job->priority] / 3600.0;
		double runtime = b->b, wait = b->a, egress, tsec, pref = 0;
		double price =
		    unit_price(st->price_hour, js->cpu, js->memory_mb,
			       js->gpu_count, b->kind);
		double near_pen = 0;
		struct terms t;
		ext_terms(xp->ext, xp->next, site, st->cls, &egress, &tsec);
		if (xp->near_ok && !xp->near_ok[st->ridx])
			near_pen = pol->near_miss_usd_per_replica_hour *
				   runtime / 3600;
		for (size_t k = 0; k < pol->nprefs; k++)
			if (mer_selector_match(&pol->prefs[k].match, st))
				pref += pol->prefs[k].usd;
		double fixed_pol =
		    pref + (b->preempts ? pol->preemption_penalty_usd : 0);
		score_terms(pol, vot_s, price, runtime, wait, ev->replicas,
			    egress, tsec, near_pen, fixed_pol, &t);
		ev->compute_usd = t.compute;
		ev->egress_usd = egress;
		ev->transfer_s = tsec;
		ev->wait_s = wait;
		ev->runtime_s = runtime;
		ev->policy_usd = t.policy;
		ev->money_usd = t.money;
		if (xp->spill) {
			ev->spill_usd = xp->spill[site];
			ev->money_usd += xp->spill_m[site];
		}
	}
	for (size_t k = 0; xp->explained && k < xp->np; k++) {
		uint32_t src = xp->psite[k];
		double bytes = xp->pbytes[k];
		int same = site == src || bytes <= 0;
		double eg =
		    same ? 0 : mer_fed_egress_usd(fed, src, site, bytes);
		double t = same ? 0 : mer_fed_transfer_s(fed, src, site, bytes);
		ev->egress_usd += eg;
		ev->money_usd += eg;
		ev->transfer_s += t;
	}
	ev->total = r->totals[site];
}
