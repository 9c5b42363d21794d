/*
 * Trace-replay simulator: jobs arrive, stages are released as their `after`
 * stages finish, a policy (the real engine or a baseline) seats them, sites
 * hold them for their true duration, and every byte, dollar and second is
 * accounted. Virtual time only; the model is written down in
 * docs/SIMULATOR.md. Not a scheduler: no preemption, no failures.
 */
#include "policy/replay.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "policy/fed.h"
#include "policy/place.h"

#define EPS 1e-9

static const char *const rp_names[MER_RP_COUNT] = {
    "meridian",	    "random",		"round-robin",
    "least-loaded", "cheapest-compute", "data-local",
};

const char *mer_replay_policy_name(int policy)
{
	return policy >= 0 && policy < MER_RP_COUNT ? rp_names[policy] : "?";
}

int mer_replay_policy_parse(const char *s, int *out)
{
	for (int i = 0; s && i < MER_RP_COUNT; i++) {
		if (strcmp(s, rp_names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	return MER_EINVAL;
}

/* ---- traces ---- */

void mer_trace_free(struct mer_trace *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->njobs; i++) {
		mer_job_free(t->jobs[i].job);
		json_decref(t->jobs[i].spec);
		free(t->jobs[i].true_s);
	}
	free(t->jobs);
	free(t);
}

struct order {
	double at;
	size_t idx;
};

static int cmp_arrival(const void *a, const void *b)
{
	const struct order *x = a, *y = b;

	if (x->at != y->at)
		return x->at < y->at ? -1 : 1;
	/* records keep their order at equal times */
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Sorts the jobs by arrival, stably. */
static int sort_jobs(struct mer_trace *t)
{
	struct order *o = calloc(t->njobs + 1, sizeof(*o));
	struct mer_trace_job *j = calloc(t->njobs + 1, sizeof(*j));

	if (!o || !j) {
		free(o);
		free(j);
		return MER_ENOMEM;
	}
	for (size_t i = 0; i < t->njobs; i++)
		o[i] = (struct order){t->jobs[i].at_s, i};
	qsort(o, t->njobs, sizeof(*o), cmp_arrival);
	for (size_t i = 0; i < t->njobs; i++)
		j[i] = t->jobs[o[i].idx];
	free(t->jobs);
	free(o);
	t->jobs = j;
	return 0;
}

/* Where a record came from, for error messages. */
static void where(char *buf, size_t n, const char *name, const size_t *lines,
		  size_t i)
{
	if (lines)
		snprintf(buf, n, "%s:%zu", name, lines[i]);
	else
		snprintf(buf, n, "records[%zu]", i);
}

static int trace_job(const json_t *rec, const char *at,
		     struct mer_trace_job *tj, char *err, size_t errlen)
{
	const char *key;
	json_t *v, *job = json_object_get(rec, "job");
	char jerr[400];
	int rv;

	json_object_foreach ((json_t *)rec, key, v) {
		if (strcmp(key, "at") && strcmp(key, "job") &&
		    strcmp(key, "true_duration_s")) {
			snprintf(err, errlen, "%s: %s: unknown key", at, key);
			return MER_EINVAL;
		}
	}
	v = json_object_get(rec, "at");
	if (!json_is_number(v) || json_number_value(v) < 0 ||
	    !isfinite(json_number_value(v))) {
		snprintf(err, errlen, "%s: at: must be a number >= 0", at);
		return MER_EINVAL;
	}
	tj->at_s = json_number_value(v);
	if (!json_is_object(job)) {
		snprintf(err, errlen, "%s: job: must be an object", at);
		return MER_EINVAL;
	}
	rv = mer_job_from_json(job, NULL, &tj->job, jerr, sizeof(jerr));
	if (rv) {
		snprintf(err, errlen, "%s: job: %s", at, jerr);
		return rv;
	}
	tj->spec = json_incref(job);
	size_t ns = tj->job->nstages;
	tj->true_s = calloc(ns, sizeof(double));
	if (!tj->true_s)
		return MER_ENOMEM;
	const json_t *td = json_object_get(rec, "true_duration_s");
	if (td && !json_is_object(td)) {
		snprintf(err, errlen, "%s: true_duration_s: must be an object",
			 at);
		return MER_EINVAL;
	}
	json_object_foreach ((json_t *)td, key, v) {
		int i = mer_job_stage_index(tj->job, key);
		if (i < 0) {
			snprintf(err, errlen,
				 "%s: true_duration_s.%s: no such stage", at,
				 key);
			return MER_EINVAL;
		}
		if (!json_is_number(v) || !(json_number_value(v) > 0) ||
		    !isfinite(json_number_value(v))) {
			snprintf(err, errlen,
				 "%s: true_duration_s.%s: must be a number > 0",
				 at, key);
			return MER_EINVAL;
		}
		tj->true_s[i] = json_number_value(v);
	}
	for (size_t i = 0; i < ns; i++) {
		if (tj->true_s[i] > 0)
			continue;
		if (tj->job->stages[i].duration_s <= 0) {
			snprintf(err, errlen,
				 "%s: true_duration_s.%s: required when the "
				 "stage gives no duration_s",
				 at, tj->job->stages[i].name);
			return MER_EINVAL;
		}
		tj->true_s[i] = tj->job->stages[i].duration_s;
	}
	return 0;
}

static int build_trace(const json_t *records, const char *name,
		       const size_t *lines, struct mer_trace **out, char *err,
		       size_t errlen)
{
	struct mer_trace *t = calloc(1, sizeof(*t));
	size_t n = json_array_size(records);
	char at[300];
	int rv = 0;

	*out = NULL;
	if (!t)
		return MER_ENOMEM;
	if (!json_is_array(records)) {
		snprintf(err, errlen, "records: must be an array");
		rv = MER_EINVAL;
		goto out_free;
	}
	t->jobs = calloc(n + 1, sizeof(*t->jobs));
	if (!t->jobs) {
		rv = MER_ENOMEM;
		goto out_free;
	}
	for (size_t i = 0; i < n; i++) {
		const json_t *rec = json_array_get(records, i);
		where(at, sizeof(at), name, lines, i);
		if (!json_is_object(rec)) {
			snprintf(err, errlen, "%s: must be an object", at);
			rv = MER_EINVAL;
			goto out_free;
		}
		if (!json_object_get(rec, "job")) {
			/* a header: the epoch and what made the trace */
			const char *key;
			json_t *v;
			json_object_foreach ((json_t *)rec, key, v) {
				if (strcmp(key, "epoch") == 0) {
					if (!json_is_integer(v) ||
					    json_integer_value(v) < 0) {
						snprintf(err, errlen,
							 "%s: epoch: must be "
							 "unix seconds",
							 at);
						rv = MER_EINVAL;
						goto out_free;
					}
					t->epoch = json_integer_value(v);
				} else if (strcmp(key, "generator") &&
					   strcmp(key, "note")) {
					snprintf(err, errlen,
						 "%s: %s: unknown key (a job "
						 "record needs \"job\")",
						 at, key);
					rv = MER_EINVAL;
					goto out_free;
				}
			}
			continue;
		}
		rv = trace_job(rec, at, &t->jobs[t->njobs], err, errlen);
		t->njobs++; /* freed with the trace even when half built */
		if (rv)
			goto out_free;
	}
	if ((rv = sort_jobs(t)))
		goto out_free;
	*out = t;
	return 0;
out_free:
	mer_trace_free(t);
	return rv;
}

int mer_trace_from_records(const json_t *records, struct mer_trace **out,
			   char *err, size_t errlen)
{
	return build_trace(records, NULL, NULL, out, err, errlen);
}

int mer_trace_parse(const char *name, const char *text, size_t len,
		    struct mer_trace **out, char *err, size_t errlen)
{
	json_t *recs = json_array();
	size_t *lines = NULL, nl = 0, cap = 0, line = 0;
	int rv = 0;

	*out = NULL;
	if (!recs)
		return MER_ENOMEM;
	for (size_t pos = 0; pos < len;) {
		const char *s = text + pos;
		const char *nlp = memchr(s, '\n', len - pos);
		size_t l = nlp ? (size_t)(nlp - s) : len - pos;
		pos += l + (nlp ? 1 : 0);
		line++;
		size_t k = 0;
		while (k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
			k++;
		if (k == l || s[k] == '#')
			continue;
		json_error_t je;
		json_t *v = json_loadb(s, l, JSON_REJECT_DUPLICATES, &je);
		if (!v) {
			snprintf(err, errlen, "%s:%zu:%d: %s", name, line,
				 je.column, je.text);
			rv = MER_EPARSE;
			goto out;
		}
		if (nl == cap) {
			size_t nc = cap ? cap * 2 : 256;
			size_t *n2 = realloc(lines, nc * sizeof(*lines));
			if (!n2) {
				json_decref(v);
				rv = MER_ENOMEM;
				goto out;
			}
			lines = n2;
			cap = nc;
		}
		lines[nl++] = line;
		if (json_array_append_new(recs, v)) {
			rv = MER_ENOMEM;
			goto out;
		}
	}
	rv = build_trace(recs, name, lines, out, err, errlen);
out:
	free(lines);
	json_decref(recs);
	return rv;
}

/* ---- the simulation ---- */

enum { ST_WAIT = 0, ST_READY, ST_RUN, ST_DONE };
enum { EV_ARRIVAL = 0, EV_END = 1 };

struct event {
	double t;
	uint64_t seq;
	uint32_t type, job, stage;
};

/* Capacity a stage took from one pool, given back when it ends. */
struct take {
	uint32_t pool;
	int kind;
	double amt;
};

struct sstage {
	int state;
	unsigned deps_left;
	struct take *takes;
	size_t ntakes, captakes;
	const char **tags; /* carried tags (inputs, outputs, producers') */
	size_t ntags;
	int gk; /* GPU kind of the primary share */
};

struct sjob {
	int tenant;
	size_t left; /* stages not done */
	int pending; /* in the pending list */
	size_t stamp;
	int done;
	struct sstage *st;
};

struct tenant {
	const char *name;
	double *gpus; /* [nkinds] in use */
	long long stages;
	double spent;
};

/* One site's share of a stage. */
struct share {
	uint32_t site;
	unsigned replicas;
	int gk;
};

struct sim {
	const struct mer_trace *tr;
	const struct mer_policy *pol;
	struct mer_replay_opts o;
	struct mer_fed *fed;
	struct mer_engine *eng;
	int dirty;
	size_t nk, npools, nsites;
	size_t *pool0;	  /* [nsites + 1] */
	uint32_t *porder; /* [npools] a site's pools by advertised wait */
	uint32_t *psite;  /* [npools] the pool's site */
	struct mer_pool **pools;	  /* [npools] */
	double *share;			  /* [nsites] shared fraction */
	double *cap, *used, *free0, *fu0; /* [npools * nk] */
	uint64_t rng;
	size_t rr_next;
	struct event *heap;
	size_t nheap, capheap;
	uint64_t seq;
	struct sjob *jobs;
	size_t *pend, npend;
	size_t *cand, ncand;
	uint8_t *freed; /* [nsites] capacity came back this round */
	uint32_t *freed_list;
	size_t nfreed;
	uint8_t *tfreed; /* [ntenants] a stage of the tenant ended */
	struct tenant *ten;
	size_t nten;
	size_t round;
	double now;
	struct mer_replay_result *r;
	/* scratch for baselines */
	struct cand_site {
		double key;
		uint32_t site;
		int gk;
		unsigned units;
	} * cs;
};

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int ev_less(const struct event *a, const struct event *b)
{
	return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static int ev_push(struct sim *m, double t, uint32_t type, uint32_t job,
		   uint32_t stage)
{
	if (m->nheap == m->capheap) {
		size_t nc = m->capheap ? m->capheap * 2 : 1024;
		struct event *h = realloc(m->heap, nc * sizeof(*h));
		if (!h)
			return MER_ENOMEM;
		m->heap = h;
		m->capheap = nc;
	}
	struct event e = {t, m->seq++, type, job, stage};
	size_t i = m->nheap++;
	while (i > 0 && ev_less(&e, &m->heap[(i - 1) / 2])) {
		m->heap[i] = m->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	m->heap[i] = e;
	return 0;
}

static struct event ev_pop(struct sim *m)
{
	struct event top = m->heap[0], last = m->heap[--m->nheap];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= m->nheap)
			break;
		if (c + 1 < m->nheap && ev_less(&m->heap[c + 1], &m->heap[c]))
			c++;
		if (!ev_less(&m->heap[c], &last))
			break;
		m->heap[i] = m->heap[c];
		i = c;
	}
	if (m->nheap)
		m->heap[i] = last;
	return top;
}

static struct mer_replay_stage *rec(struct sim *m, size_t j, size_t i)
{
	return &m->r->stage[m->r->job0[j] + i];
}

/* The snapshot an agent would report for one pool resource now: free and
 * federation_used move with what the replay runs; usable follows the rule
 * of docs/SITES.md. */
static void sync_res(struct sim *m, size_t p, size_t k)
{
	struct mer_res *res = &m->pools[p]->res[k];
	size_t x = p * m->nk + k;
	uint32_t s = m->psite[p];

	if (!res->present)
		return;
	res->free = m->free0[x] - m->used[x];
	res->federation_used = m->fu0[x] + m->used[x];
	double c =
	    floor(res->allocatable * m->share[s] + 1e-9) - res->federation_used;
	res->usable = fmax(0, fmin(res->free, c));
	m->dirty = 1;
}

static double avail(const struct sim *m, size_t p, int k, int ever)
{
	size_t x = p * m->nk + (size_t)k;
	return ever ? m->cap[x] : m->cap[x] - m->used[x];
}

static int pool_fabric_ok(const struct sim *m, size_t p, unsigned fab)
{
	return fab == 0 || (m->pools[p]->fabric & fab);
}

static unsigned nreplicas(const struct mer_stage *st)
{
	return st->replicas ? st->replicas : 1;
}

/* Gang stages and each replica of a replicated one sit in one pool; a
 * single non-gang stage may span the site's pools (as the engine counts). */
static int per_pool(const struct mer_stage *st)
{
	return st->gang || nreplicas(st) > 1;
}

/* Replicas (up to want) of st that fit at site s with GPU kind gk, as the
 * engine counts them: one non-gang unit may span pools, anything else sits
 * in one pool per replica. ever: against the shared capacity, empty. */
static unsigned units_at(const struct sim *m, const struct mer_stage *st,
			 uint32_t s, int gk, unsigned want, int ever)
{
	const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
	const double need[3] = {st->cpu, st->memory_mb, (double)st->gpu_count};
	size_t p0 = m->pool0[s], p1 = m->pool0[s + 1];

	if (!per_pool(st)) {
		double have[3] = {0, 0, 0};
		for (size_t q = p0; q < p1; q++) {
			size_t p = m->porder[q];
			if (!pool_fabric_ok(m, p, st->fabric))
				continue;
			for (int k = 0; k < 3; k++)
				if (kinds[k] >= 0 && need[k] > 0)
					have[k] += avail(m, p, kinds[k], ever);
		}
		for (int k = 0; k < 3; k++)
			if (kinds[k] >= 0 && need[k] > 0 &&
			    have[k] + EPS < need[k])
				return 0;
		return 1;
	}
	unsigned total = 0;
	for (size_t q = p0; q < p1 && total < want; q++) {
		size_t p = m->porder[q];
		double u = 1e6;
		if (!pool_fabric_ok(m, p, st->fabric))
			continue;
		for (int k = 0; k < 3; k++)
			if (kinds[k] >= 0 && need[k] > 0)
				u = fmin(u, floor(avail(m, p, kinds[k], ever) /
						      need[k] +
						  EPS));
		total += u > 0 ? (unsigned)u : 0;
	}
	return total < want ? total : want;
}

static int add_take(struct sstage *ss, size_t p, int k, double amt)
{
	if (ss->ntakes == ss->captakes) {
		size_t nc = ss->captakes ? ss->captakes * 2 : 8;
		struct take *t = realloc(ss->takes, nc * sizeof(*t));
		if (!t)
			return MER_ENOMEM;
		ss->takes = t;
		ss->captakes = nc;
	}
	ss->takes[ss->ntakes++] = (struct take){(uint32_t)p, k, amt};
	return 0;
}

static void give_back(struct sim *m, struct sstage *ss, size_t from)
{
	for (size_t i = from; i < ss->ntakes; i++) {
		const struct take *t = &ss->takes[i];
		m->used[t->pool * m->nk + (size_t)t->kind] -= t->amt;
		sync_res(m, t->pool, (size_t)t->kind);
	}
	ss->ntakes = from;
}

static int take_amt(struct sim *m, struct sstage *ss, size_t p, int k,
		    double amt)
{
	m->used[p * m->nk + (size_t)k] += amt;
	sync_res(m, p, (size_t)k);
	return add_take(ss, p, k, amt);
}

/*
 * Seats R replicas of st at site s with GPU kind gk, the way units_at
 * counts them. *wait gets the largest advertised wait of the pools used:
 * the site scheduler's queue the stage passes before it runs. MER_EBUSY
 * (nothing taken) when it does not fit.
 */
static int seat(struct sim *m, const struct mer_stage *st, struct sstage *ss,
		uint32_t s, int gk, unsigned R, double *wait)
{
	const int kinds[3] = {MER_KIND_CPU, MER_KIND_MEM, gk};
	const double need[3] = {st->cpu, st->memory_mb, (double)st->gpu_count};
	size_t p0 = m->pool0[s], p1 = m->pool0[s + 1], mark = ss->ntakes;
	int rv;

	*wait = 0;
	if (units_at(m, st, s, gk, R, 0) < R)
		return MER_EBUSY;
	if (!per_pool(st)) {
		for (int k = 0; k < 3; k++) {
			double rem = kinds[k] >= 0 ? need[k] : 0;
			for (size_t q = p0; q < p1 && rem > EPS; q++) {
				size_t p = m->porder[q];
				if (!pool_fabric_ok(m, p, st->fabric))
					continue;
				double a = fmin(avail(m, p, kinds[k], 0), rem);
				if (a <= 0)
					continue;
				if ((rv = take_amt(m, ss, p, kinds[k], a)))
					goto fail;
				rem -= a;
				*wait = fmax(*wait, m->pools[p]->est_wait_s);
			}
		}
		return 0;
	}
	for (unsigned r = 0; r < R; r++) {
		size_t q;
		for (q = p0; q < p1; q++) {
			size_t p = m->porder[q];
			int ok = pool_fabric_ok(m, p, st->fabric);
			for (int k = 0; k < 3 && ok; k++)
				if (kinds[k] >= 0 && need[k] > 0 &&
				    avail(m, p, kinds[k], 0) + EPS < need[k])
					ok = 0;
			if (!ok)
				continue;
			for (int k = 0; k < 3; k++)
				if (kinds[k] >= 0 && need[k] > 0 &&
				    (rv =
					 take_amt(m, ss, p, kinds[k], need[k])))
					goto fail;
			*wait = fmax(*wait, m->pools[p]->est_wait_s);
			break;
		}
		if (q == p1) {
			rv = MER_EBUSY;
			goto fail;
		}
	}
	return 0;
fail:
	give_back(m, ss, mark);
	return rv;
}

/* ---- data movement and residency ---- */

static int tag_add(struct sstage *ss, const char *tag)
{
	for (size_t i = 0; i < ss->ntags; i++)
		if (strcmp(ss->tags[i], tag) == 0)
			return 0;
	const char **t = realloc(ss->tags, (ss->ntags + 1) * sizeof(*t));
	if (!t)
		return MER_ENOMEM;
	ss->tags = t;
	ss->tags[ss->ntags++] = tag;
	return 0;
}

/* Tags a stage carries: its inputs' (the catalog's too), its outputs' and
 * those of every stage whose outputs it reads (docs/JOBS.md). */
static int carry_tags(struct sim *m, size_t j, size_t i)
{
	const struct mer_stage *st = &m->tr->jobs[j].job->stages[i];
	struct sstage *ss = &m->jobs[j].st[i];
	const struct mer_fed *fed = m->fed;
	int rv;

	ss->ntags = 0;
	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		for (size_t t = 0; t < in->ntags; t++)
			if ((rv = tag_add(ss, in->tags[t])))
				return rv;
		if (in->producer >= 0) {
			const struct sstage *ps = &m->jobs[j].st[in->producer];
			for (size_t t = 0; t < ps->ntags; t++)
				if ((rv = tag_add(ss, ps->tags[t])))
					return rv;
			continue;
		}
		int d = mer_fed_dataset_first(fed, in->name);
		for (size_t x = d < 0 ? fed->ndatasets : (size_t)d;
		     x < fed->ndatasets &&
		     strcmp(fed->datasets[x].name, in->name) == 0;
		     x++)
			for (size_t t = 0; t < fed->datasets[x].ntags; t++)
				if ((rv =
					 tag_add(ss, fed->datasets[x].tags[t])))
					return rv;
	}
	for (size_t k = 0; k < st->noutputs; k++)
		for (size_t t = 0; t < st->outputs[k].ntags; t++)
			if ((rv = tag_add(ss, st->outputs[k].tags[t])))
				return rv;
	return 0;
}

/* 1 when no residency rule for these tags forbids region ridx. */
static int region_allowed(const struct sim *m, const char *const *tags,
			  size_t ntags, char **tags2, size_t ntags2,
			  uint32_t ridx)
{
	const char *region = m->fed->regions[ridx];

	for (size_t k = 0; k < m->pol->nresidency; k++) {
		const struct mer_residency *rr = &m->pol->residency[k];
		int hit = 0;
		for (size_t t = 0; t < ntags && !hit; t++)
			hit = strcmp(tags[t], rr->tag) == 0;
		for (size_t t = 0; t < ntags2 && !hit; t++)
			hit = strcmp(tags2[t], rr->tag) == 0;
		if (!hit)
			continue;
		int ok = 0;
		for (size_t x = 0; x < rr->nregions && !ok; x++)
			ok = strcmp(rr->regions[x], region) == 0;
		if (!ok)
			return 0;
	}
	return 1;
}

struct move {
	double bytes, usd, secs;
};

/* Moving one catalog or external input to site dst: from the replica that
 * is cheapest in egress (then quickest, then first by site name) among
 * those the residency rules let serve it; a replica at dst costs nothing.
 * Returns 0, or MER_ENOTFOUND when the input exists nowhere. */
static int move_ext(const struct sim *m, const struct mer_input *in,
		    uint32_t dst, struct move *mv)
{
	const struct mer_fed *fed = m->fed;
	int d = mer_fed_dataset_first(fed, in->name);
	int best = -1, best_ok = 0;
	double busd = 0, bsec = 0, bbytes = 0;

	memset(mv, 0, sizeof(*mv));
	for (size_t x = d < 0 ? fed->ndatasets : (size_t)d;
	     x < fed->ndatasets && strcmp(fed->datasets[x].name, in->name) == 0;
	     x++) {
		const struct mer_dataset *ds = &fed->datasets[x];
		const struct mer_site *src = &fed->sites[ds->site];
		double bytes = in->bytes >= 0 ? in->bytes : ds->bytes;
		if (ds->site == dst)
			return 0;
		if (src->health == MER_HEALTH_DOWN)
			continue;
		int ok =
		    region_allowed(m, (const char *const *)ds->tags, ds->ntags,
				   in->tags, in->ntags, src->ridx);
		double usd = mer_fed_egress_usd(fed, ds->site, dst, bytes);
		double sec = mer_fed_transfer_s(fed, ds->site, dst, bytes);
		if (best < 0 || (ok && !best_ok) ||
		    (ok == best_ok &&
		     (usd < busd || (usd == busd && sec < bsec)))) {
			best = (int)x;
			best_ok = ok;
			busd = usd;
			bsec = sec;
			bbytes = bytes;
		}
	}
	if (best >= 0) {
		*mv = (struct move){bbytes, busd, bsec};
		return 0;
	}
	int r1 = in->region ? mer_fed_region_index(fed, in->region) : -1;
	if (r1 < 0)
		return MER_ENOTFOUND;
	const struct mer_site *ds = &fed->sites[dst];
	const struct mer_link *l = mer_fed_link(fed, (uint32_t)r1, ds->ridx);
	double bw = l->gbps, B = in->bytes > 0 ? in->bytes : 0;
	if (ds->wan_gbps > 0 && ds->wan_gbps < bw)
		bw = ds->wan_gbps;
	*mv = (struct move){B, B / 1e9 * l->egress_gb, B * 8 / (bw * 1e9)};
	return 0;
}

/* Every input of stage i of job j moved to site dst (summed: one WAN
 * path, inputs one after another). */
static int move_inputs(struct sim *m, size_t j, size_t i, uint32_t dst,
		       struct move *tot)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	const struct mer_stage *st = &job->stages[i];
	int rv;

	memset(tot, 0, sizeof(*tot));
	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		struct move mv = {0, 0, 0};
		if (in->producer >= 0) {
			const struct mer_replay_stage *pr =
			    rec(m, j, (size_t)in->producer);
			double B = in->bytes >= 0 ? in->bytes
						  : job->stages[in->producer]
							.outputs[in->output]
							.bytes;
			uint32_t src = (uint32_t)pr->site;
			if (src != dst && B > 0)
				mv = (struct move){
				    B, mer_fed_egress_usd(m->fed, src, dst, B),
				    mer_fed_transfer_s(m->fed, src, dst, B)};
		} else if ((rv = move_ext(m, in, dst, &mv))) {
			return rv;
		}
		tot->bytes += mv.bytes;
		tot->usd += mv.usd;
		tot->secs += mv.secs;
	}
	return 0;
}

/* ---- tenants ---- */

static int tenant_of(struct sim *m, const char *name)
{
	for (size_t i = 0; i < m->nten; i++)
		if (strcmp(m->ten[i].name, name) == 0)
			return (int)i;
	struct tenant *t = realloc(m->ten, (m->nten + 1) * sizeof(*t));
	if (!t)
		return -1;
	m->ten = t;
	t[m->nten] = (struct tenant){name, calloc(m->nk, sizeof(double)), 0, 0};
	if (!t[m->nten].gpus)
		return -1;
	return (int)m->nten++;
}

/* ---- dispatch ---- */

/*
 * Runs stage i of job j on the given shares (site, replicas, GPU kind):
 * takes capacity, accounts compute, egress and times, and schedules its
 * end. MER_EBUSY (nothing changed) when the capacity is not there.
 */
static int dispatch(struct sim *m, size_t j, size_t i, const struct share *sh,
		    size_t nsh)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	const struct mer_stage *st = &job->stages[i];
	struct sstage *ss = &m->jobs[j].st[i];
	struct mer_replay_stage *r = rec(m, j, i);
	double true_s = m->tr->jobs[j].true_s[i];
	double waits[64];
	struct move mv[64];
	int rv;

	if (nsh == 0 || nsh > 64)
		return MER_EBUSY;
	for (size_t k = 0; k < nsh; k++) {
		if ((rv = seat(m, st, ss, sh[k].site, sh[k].gk, sh[k].replicas,
			       &waits[k])))
			goto fail;
	}
	for (size_t k = 0; k < nsh; k++)
		if ((rv = move_inputs(m, j, i, sh[k].site, &mv[k])))
			goto fail;
	if ((rv = carry_tags(m, j, i)))
		goto fail;
	/* committed: nothing below fails */
	r->placed = 1;
	r->site = (int32_t)sh[0].site;
	r->placed_s = m->now;
	r->nsites = (unsigned)nsh;
	r->start_s = INFINITY;
	double maxwait = 0, maxtr = 0;
	for (size_t k = 0; k < nsh; k++) {
		const struct mer_site *site = &m->fed->sites[sh[k].site];
		struct mer_replay_site *rs = &m->r->sites[sh[k].site];
		double start = m->now + mv[k].secs + waits[k];
		double hours = true_s / 3600.0 * sh[k].replicas;
		double usd = (site->price_hour[MER_KIND_CPU] * st->cpu +
			      site->price_hour[MER_KIND_MEM] * st->memory_mb) *
			     hours;
		if (sh[k].gk >= 0)
			usd +=
			    site->price_hour[sh[k].gk] * st->gpu_count * hours;
		r->compute_usd += usd;
		r->egress_bytes += mv[k].bytes;
		r->egress_usd += mv[k].usd;
		r->start_s = fmin(r->start_s, start);
		r->end_s = fmax(r->end_s, start + true_s);
		r->replicas += sh[k].replicas;
		maxwait = fmax(maxwait, waits[k]);
		maxtr = fmax(maxtr, mv[k].secs);
		if (sh[k].gk >= 0)
			rs->gpu_busy_s +=
			    (double)st->gpu_count * sh[k].replicas * true_s;
		rs->compute_usd += usd;
		rs->stages++;
		if (!region_allowed(m, ss->tags, ss->ntags, NULL, 0,
				    site->ridx))
			r->violation = 1;
	}
	r->wait_s = m->now - r->release_s + maxwait;
	r->transfer_s = maxtr;
	ss->state = ST_RUN;
	ss->gk = sh[0].gk;
	struct tenant *t = &m->ten[m->jobs[j].tenant];
	t->stages++;
	for (size_t k = 0; k < nsh; k++)
		if (sh[k].gk >= 0)
			t->gpus[sh[k].gk] +=
			    (double)st->gpu_count * sh[k].replicas;
	t->spent += r->compute_usd + r->egress_usd;
	return ev_push(m, r->end_s, EV_END, (uint32_t)j, (uint32_t)i);
fail:
	give_back(m, ss, 0);
	return rv;
}

/* ---- Meridian: the engine ---- */

static int engine_fresh(struct sim *m)
{
	if (m->eng && !m->dirty)
		return 0;
	mer_engine_free(m->eng);
	m->eng = NULL;
	m->dirty = 0;
	return mer_engine_new(m->fed, m->pol, &m->eng);
}

/* The job without the stages that cannot run yet: used when the whole
 * remaining DAG does not fit now only because of later stages. */
static int trimmed_job(struct sim *m, size_t j, struct mer_job **out)
{
	const json_t *spec = m->tr->jobs[j].spec;
	const struct mer_job *job = m->tr->jobs[j].job;
	json_t *copy = json_deep_copy(spec), *keep = json_array();
	char err[256];
	int rv;

	*out = NULL;
	if (!copy || !keep) {
		json_decref(copy);
		json_decref(keep);
		return MER_ENOMEM;
	}
	const json_t *stages = json_object_get(spec, "stages");
	for (size_t i = 0; i < job->nstages; i++)
		if (m->jobs[j].st[i].state != ST_WAIT)
			json_array_append(keep, json_array_get(stages, i));
	json_object_set_new(copy, "stages", keep);
	rv = mer_job_from_json(copy, NULL, out, err, sizeof(err));
	json_decref(copy);
	return rv;
}

static int place_with(struct sim *m, size_t j, const struct mer_job *job,
		      struct mer_placement **out)
{
	const struct mer_job *full = m->tr->jobs[j].job;
	struct mer_stage_fix fx[MER_JOB_MAX_STAGES];
	struct mer_usage_gpu ug[MER_FED_MAX_KINDS];
	struct tenant *t = &m->ten[m->jobs[j].tenant];
	size_t nfx = 0, nug = 0;
	int rv;

	for (size_t i = 0; i < full->nstages; i++) {
		int s = m->jobs[j].st[i].state;
		if (s != ST_RUN && s != ST_DONE)
			continue;
		fx[nfx++] = (struct mer_stage_fix){
		    full->stages[i].name,
		    m->fed->sites[rec(m, j, i)->site].name, s == ST_DONE};
	}
	for (size_t k = 0; k < m->nk; k++)
		if (t->gpus[k] > 0 && strncmp(m->fed->kinds[k], "gpu:", 4) == 0)
			ug[nug++] = (struct mer_usage_gpu){m->fed->kinds[k] + 4,
							   t->gpus[k]};
	struct mer_usage use = {ug, nug, t->stages, t->spent};
	struct mer_place_input in = {
	    .job = job,
	    .usage = &use,
	    .fixed = fx,
	    .nfixed = nfx,
	    .now = m->tr->epoch + (long long)m->now,
	};
	if ((rv = engine_fresh(m)))
		return rv;
	m->r->engine_calls++;
	return mer_engine_place(m->eng, &in, 0, out);
}

/* Dispatches the ready stages of job j as placement pl (of job pj, which
 * is j's job or a trimmed copy) says. */
static int run_plan(struct sim *m, size_t j, const struct mer_job *pj,
		    const struct mer_placement *pl)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	struct share sh[64];
	int rv;

	for (size_t q = 0; q < job->nstages; q++) {
		size_t i = job->topo[q];
		if (m->jobs[j].st[i].state != ST_READY)
			continue;
		int pi = pj == job
			     ? (int)i
			     : mer_job_stage_index(pj, job->stages[i].name);
		if (pi < 0)
			continue;
		const struct mer_stage_result *sr = &pl->stages[pi];
		if (sr->status != MER_STAGE_PLACED)
			continue;
		size_t n = 0;
		for (size_t k = 0; k < sr->nshares && n < 64; k++)
			if (sr->shares[k].replicas)
				sh[n++] = (struct share){
				    sr->shares[k].site, sr->shares[k].replicas,
				    sr->shares[k].gpu_kind};
		if (n == 0)
			sh[n++] = (struct share){(uint32_t)sr->site,
						 nreplicas(&job->stages[i]),
						 sr->gpu_kind};
		rv = dispatch(m, j, i, sh, n);
		if (rv == MER_EBUSY) {
			/* the engine saw capacity the replay cannot seat */
			m->r->mismatches++;
			continue;
		}
		if (rv)
			return rv;
	}
	return 0;
}

static int attempt_meridian(struct sim *m, size_t j)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	struct mer_placement *pl = NULL;
	struct mer_job *trim = NULL;
	int rv, future = 0;

	for (size_t i = 0; i < job->nstages; i++)
		future |= m->jobs[j].st[i].state == ST_WAIT;
	/* The whole remaining DAG first, so later stages' costs pull the
	 * ready ones (the joint placement); if it does not fit now only
	 * because of later stages, the ready ones alone. */
	if ((rv = place_with(m, j, job, &pl)))
		goto out;
	if (pl->complete) {
		rv = run_plan(m, j, job, pl);
		goto out;
	}
	if (!future)
		goto out;
	mer_placement_free(pl);
	pl = NULL;
	if ((rv = trimmed_job(m, j, &trim)))
		goto out;
	if ((rv = place_with(m, j, trim, &pl)))
		goto out;
	if (pl->complete)
		rv = run_plan(m, j, trim, pl);
out:
	mer_placement_free(pl);
	mer_job_free(trim);
	return rv;
}

/* ---- baselines ---- */

static int str_in(char **list, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return 1;
	return 0;
}

/* What every policy respects: a live, undrained site that accepts the
 * tenant and the job's own site and region lists. */
static int site_usable(const struct sim *m, const struct mer_job *job,
		       uint32_t s)
{
	const struct mer_site *site = &m->fed->sites[s];

	if (site->health != MER_HEALTH_HEALTHY || site->drained)
		return 0;
	if (site->ntenants_allow &&
	    !str_in(site->tenants_allow, site->ntenants_allow, job->tenant))
		return 0;
	if (str_in(site->tenants_deny, site->ntenants_deny, job->tenant))
		return 0;
	if (job->nsites_allow &&
	    !str_in(job->sites_allow, job->nsites_allow, site->name))
		return 0;
	if (str_in(job->sites_deny, job->nsites_deny, site->name))
		return 0;
	const char *reg = m->fed->regions[site->ridx];
	if (job->nregions_allow &&
	    !str_in(job->regions_allow, job->nregions_allow, reg))
		return 0;
	return !str_in(job->regions_deny, job->nregions_deny, reg);
}

/* Hourly compute price of one replica at s with kind gk. */
static double replica_price(const struct sim *m, const struct mer_stage *st,
			    uint32_t s, int gk)
{
	const double *p = m->fed->sites[s].price_hour;
	double v = p[MER_KIND_CPU] * st->cpu + p[MER_KIND_MEM] * st->memory_mb;

	return gk >= 0 ? v + p[gk] * st->gpu_count : v;
}

/* The GPU kind a baseline uses at s: the first acceptable model (the
 * cheapest for cheapest-compute) with room for a replica; -1 for a CPU
 * stage; -2 when none fits. ever: judge by empty capacity. */
static int pick_kind(const struct sim *m, const struct mer_stage *st,
		     uint32_t s, int ever)
{
	char kind[80];
	int best = -2;

	if (st->gpu_count == 0)
		return units_at(m, st, s, -1, 1, ever) ? -1 : -2;
	for (size_t x = 0; x < st->ngpu_models; x++) {
		snprintf(kind, sizeof(kind), "gpu:%s", st->gpu_models[x]);
		int k = mer_fed_kind_index(m->fed, kind);
		if (k < 0 || !units_at(m, st, s, k, 1, ever))
			continue;
		if (m->o.policy != MER_RP_CHEAPEST)
			return k;
		if (best < 0 || m->fed->sites[s].price_hour[k] <
				    m->fed->sites[s].price_hour[best])
			best = k;
	}
	return best;
}

/* Share of the site's GPUs (CPUs for CPU stages) in use now. */
static double site_load(const struct sim *m, uint32_t s, int gpu)
{
	double cap = 0, used = 0;

	for (size_t p = m->pool0[s]; p < m->pool0[s + 1]; p++) {
		for (size_t k = 0; k < m->nk; k++) {
			int is_gpu = strncmp(m->fed->kinds[k], "gpu:", 4) == 0;
			if (gpu ? !is_gpu : k != MER_KIND_CPU)
				continue;
			cap += m->cap[p * m->nk + k];
			used += m->used[p * m->nk + k];
		}
	}
	return cap > 0 ? used / cap : 1;
}

/* Bytes of stage i's inputs already at site s. */
static double local_bytes(struct sim *m, size_t j, size_t i, uint32_t s)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	const struct mer_stage *st = &job->stages[i];
	double b = 0;

	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		if (in->producer >= 0) {
			if ((uint32_t)rec(m, j, (size_t)in->producer)->site ==
			    s)
				b += in->bytes >= 0 ? in->bytes
						    : job->stages[in->producer]
							  .outputs[in->output]
							  .bytes;
			continue;
		}
		int d = mer_fed_dataset_first(m->fed, in->name);
		for (size_t x = d < 0 ? m->fed->ndatasets : (size_t)d;
		     x < m->fed->ndatasets &&
		     strcmp(m->fed->datasets[x].name, in->name) == 0;
		     x++)
			if (m->fed->datasets[x].site == s)
				b += in->bytes >= 0 ? in->bytes
						    : m->fed->datasets[x].bytes;
	}
	return b;
}

/* The sites holding the stage's biggest input (1 per site in hold[]);
 * returns how many. */
static size_t biggest_input_sites(struct sim *m, size_t j, size_t i,
				  uint8_t *hold)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	const struct mer_stage *st = &job->stages[i];
	double big = -1;
	size_t n = 0;

	for (size_t k = 0; k < st->ninputs; k++) {
		const struct mer_input *in = &st->inputs[k];
		double b = -1;
		if (in->producer >= 0) {
			b = in->bytes >= 0 ? in->bytes
					   : job->stages[in->producer]
						 .outputs[in->output]
						 .bytes;
			if (b <= big)
				continue;
			memset(hold, 0, m->nsites);
			hold[rec(m, j, (size_t)in->producer)->site] = 1;
			n = 1;
			big = b;
			continue;
		}
		int d = mer_fed_dataset_first(m->fed, in->name);
		if (d < 0)
			continue;
		b = in->bytes >= 0 ? in->bytes : m->fed->datasets[d].bytes;
		if (b <= big)
			continue;
		memset(hold, 0, m->nsites);
		n = 0;
		for (size_t x = (size_t)d;
		     x < m->fed->ndatasets &&
		     strcmp(m->fed->datasets[x].name, in->name) == 0;
		     x++) {
			if (m->fed->sites[m->fed->datasets[x].site].health ==
			    MER_HEALTH_DOWN)
				continue;
			hold[m->fed->datasets[x].site] = 1;
			n++;
		}
		big = b;
	}
	return n;
}

static int cmp_cand(const void *a, const void *b)
{
	const struct cand_site *x = a, *y = b;

	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return x->site < y->site ? -1 : x->site > y->site;
}

/* Places stage i of job j by the baseline's rule, or leaves it ready. */
static int attempt_baseline(struct sim *m, size_t j, size_t i)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	const struct mer_stage *st = &job->stages[i];
	unsigned R = nreplicas(st);
	size_t nc = 0, n = m->nsites;
	uint8_t *hold = NULL;
	int rv = 0, only_hold = 0;

	/* an input found nowhere: nobody can run it */
	for (size_t k = 0; k < st->ninputs; k++) {
		struct move mv;
		if (st->inputs[k].producer < 0 &&
		    move_ext(m, &st->inputs[k], 0, &mv) == MER_ENOTFOUND)
			return 0;
	}
	if (m->o.policy == MER_RP_DATA_LOCAL) {
		hold = calloc(n ? n : 1, 1);
		if (!hold)
			return MER_ENOMEM;
		int any_ok = 0, any_ever = 0;
		if (biggest_input_sites(m, j, i, hold)) {
			for (uint32_t s = 0; s < n; s++) {
				if (!hold[s] || !site_usable(m, job, s))
					continue;
				any_ever |= pick_kind(m, st, s, 1) != -2;
				any_ok |= pick_kind(m, st, s, 0) != -2;
			}
		}
		/* where the data is, even if that means waiting for it;
		 * elsewhere only when no site holding it ever could */
		if (any_ever && !any_ok)
			goto out;
		only_hold = any_ok;
	}
	for (uint32_t s = 0; s < n; s++) {
		if (!site_usable(m, job, s))
			continue;
		if (only_hold && !hold[s])
			continue;
		int gk = pick_kind(m, st, s, 0);
		if (gk == -2)
			continue;
		struct cand_site *c = &m->cs[nc++];
		c->site = s;
		c->gk = gk;
		c->units = units_at(m, st, s, gk, R, 0);
		switch (m->o.policy) {
		case MER_RP_RANDOM:
			c->key = (double)(rng_next(&m->rng) >> 11);
			break;
		case MER_RP_ROUND_ROBIN:
			c->key = (double)((s + n - m->rr_next % n) % n);
			break;
		case MER_RP_LEAST_LOADED:
			c->key = site_load(m, s, st->gpu_count > 0);
			break;
		case MER_RP_CHEAPEST:
			c->key = replica_price(m, st, s, gk);
			break;
		default: /* data-local: most bytes already there */
			c->key = -local_bytes(m, j, i, s) +
				 site_load(m, s, st->gpu_count > 0) * 1e-3;
			break;
		}
	}
	if (nc == 0)
		goto out;
	qsort(m->cs, nc, sizeof(*m->cs), cmp_cand);
	struct share sh[64];
	size_t nsh = 0;
	unsigned left = R;
	for (size_t k = 0; k < nc && left && nsh < 64; k++) {
		unsigned u = m->cs[k].units < left ? m->cs[k].units : left;
		if (!u)
			continue;
		sh[nsh++] = (struct share){m->cs[k].site, u, m->cs[k].gk};
		left -= u;
	}
	if (left)
		goto out; /* not all replicas fit now */
	rv = dispatch(m, j, i, sh, nsh);
	if (rv == MER_EBUSY) {
		m->r->mismatches++;
		rv = 0;
	} else if (rv == 0 && m->o.policy == MER_RP_ROUND_ROBIN) {
		m->rr_next = sh[0].site + 1;
	}
out:
	free(hold);
	return rv;
}

/* ---- the event loop ---- */

static int job_has_ready(const struct sim *m, size_t j)
{
	const struct mer_job *job = m->tr->jobs[j].job;

	for (size_t i = 0; i < job->nstages; i++)
		if (m->jobs[j].st[i].state == ST_READY)
			return 1;
	return 0;
}

static int add_cand(struct sim *m, size_t j)
{
	if (m->jobs[j].stamp == m->round)
		return 0;
	m->jobs[j].stamp = m->round;
	m->cand[m->ncand++] = j;
	return 0;
}

static void release_stage(struct sim *m, size_t j, size_t i)
{
	m->jobs[j].st[i].state = ST_READY;
	rec(m, j, i)->release_s = m->now;
}

static void on_arrival(struct sim *m, size_t j)
{
	const struct mer_job *job = m->tr->jobs[j].job;

	for (size_t i = 0; i < job->nstages; i++)
		if (job->stages[i].nafter == 0)
			release_stage(m, j, i);
	add_cand(m, j);
}

static void on_end(struct sim *m, size_t j, size_t i)
{
	const struct mer_job *job = m->tr->jobs[j].job;
	struct sjob *sj = &m->jobs[j];
	struct sstage *ss = &sj->st[i];
	const struct mer_stage *st = &job->stages[i];
	struct tenant *t = &m->ten[sj->tenant];

	for (size_t k = 0; k < ss->ntakes; k++) {
		uint32_t s = m->psite[ss->takes[k].pool];
		if (!m->freed[s]) {
			m->freed[s] = 1;
			m->freed_list[m->nfreed++] = s;
		}
		if (ss->takes[k].kind >= 0 &&
		    strncmp(m->fed->kinds[ss->takes[k].kind], "gpu:", 4) == 0)
			t->gpus[ss->takes[k].kind] -= ss->takes[k].amt;
	}
	give_back(m, ss, 0);
	(void)st;
	ss->state = ST_DONE;
	t->stages--;
	m->tfreed[sj->tenant] = 1;
	for (size_t c = 0; c < job->nstages; c++) {
		const struct mer_stage *cs = &job->stages[c];
		for (size_t k = 0; k < cs->nafter; k++) {
			if (cs->deps[k] != i)
				continue;
			if (--sj->st[c].deps_left == 0)
				release_stage(m, j, c);
		}
	}
	if (--sj->left == 0) {
		sj->done = 1;
		m->r->jct_s[j] = m->now - m->tr->jobs[j].at_s;
	}
	add_cand(m, j);
}

/* A pending job is worth another try when capacity came back at a site
 * that could now hold one of its ready stages, or (for the engine, which
 * counts quotas) when one of its tenant's stages ended. */
static int worth_retry(const struct sim *m, size_t j)
{
	const struct mer_job *job = m->tr->jobs[j].job;

	if (m->o.policy == MER_RP_MERIDIAN && m->tfreed[m->jobs[j].tenant])
		return 1;
	for (size_t i = 0; i < job->nstages; i++) {
		if (m->jobs[j].st[i].state != ST_READY)
			continue;
		for (size_t f = 0; f < m->nfreed; f++)
			if (pick_kind(m, &job->stages[i], m->freed_list[f],
				      0) != -2)
				return 1;
	}
	return 0;
}

static int cmp_job(const void *a, const void *b, void *arg)
{
	const struct sim *m = arg;
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	int px = m->tr->jobs[x].job->priority,
	    py = m->tr->jobs[y].job->priority;

	if (px != py)
		return px < py ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int place_round(struct sim *m)
{
	const struct mer_trace *tr = m->tr;
	size_t keep = 0;
	int rv;

	if (m->nfreed || memchr(m->tfreed, 1, m->nten ? m->nten : 1)) {
		for (size_t k = 0; k < m->npend; k++) {
			size_t j = m->pend[k];
			if (m->jobs[j].stamp != m->round && worth_retry(m, j))
				add_cand(m, j);
		}
	}
	qsort_r(m->cand, m->ncand, sizeof(size_t), cmp_job, m);
	for (size_t c = 0; c < m->ncand; c++) {
		size_t j = m->cand[c];
		if (!job_has_ready(m, j))
			continue;
		if (m->o.policy == MER_RP_MERIDIAN) {
			rv = attempt_meridian(m, j);
		} else {
			const struct mer_job *job = tr->jobs[j].job;
			rv = 0;
			for (size_t q = 0; q < job->nstages && !rv; q++)
				if (m->jobs[j].st[job->topo[q]].state ==
				    ST_READY)
					rv = attempt_baseline(m, j,
							      job->topo[q]);
		}
		if (rv)
			return rv;
	}
	/* the pending list: every job left with a ready stage */
	for (size_t k = 0; k < m->npend; k++) {
		size_t j = m->pend[k];
		m->jobs[j].pending = 0;
	}
	for (size_t k = 0; k < m->npend; k++) {
		size_t j = m->pend[k];
		if (!m->jobs[j].pending && job_has_ready(m, j)) {
			m->jobs[j].pending = 1;
			m->pend[keep++] = j;
		}
	}
	m->npend = keep;
	for (size_t c = 0; c < m->ncand; c++) {
		size_t j = m->cand[c];
		if (!m->jobs[j].pending && job_has_ready(m, j)) {
			m->jobs[j].pending = 1;
			m->pend[m->npend++] = j;
		}
	}
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int summarize(struct sim *m, int cut)
{
	struct mer_replay_result *r = m->r;
	const struct mer_trace *tr = m->tr;
	double *jct = malloc((tr->njobs + 1) * sizeof(double));
	double wsum = 0, last = 0;
	size_t nj = 0;

	if (!jct)
		return MER_ENOMEM;
	r->jobs = tr->njobs;
	for (size_t j = 0; j < tr->njobs; j++) {
		const struct mer_job *job = tr->jobs[j].job;
		int ready = 0;
		for (size_t i = 0; i < job->nstages; i++) {
			struct mer_replay_stage *s = rec(m, j, i);
			r->stages++;
			ready |= m->jobs[j].st[i].state == ST_READY;
			if (!s->placed) {
				r->stages_unplaced++;
				continue;
			}
			r->stages_placed++;
			r->compute_usd += s->compute_usd;
			r->egress_bytes += s->egress_bytes;
			r->egress_usd += s->egress_usd;
			r->transfer_s += s->transfer_s;
			r->residency_violations += s->violation != 0;
			wsum += s->wait_s;
			last = fmax(last, s->end_s);
		}
		if (m->jobs[j].done)
			jct[nj++] = r->jct_s[j];
		else if (ready)
			r->jobs_unplaced++;
	}
	r->jobs_completed = nj;
	r->wait_mean_s = r->stages_placed ? wsum / r->stages_placed : 0;
	if (nj) {
		double s = 0;
		for (size_t k = 0; k < nj; k++)
			s += jct[k];
		r->jct_mean_s = s / nj;
		qsort(jct, nj, sizeof(double), cmp_double);
		size_t x = (size_t)ceil(0.95 * (double)nj);
		r->jct_p95_s = jct[x ? x - 1 : 0];
	}
	free(jct);
	r->horizon_s = cut ? m->o.max_time_s : last;
	for (size_t s = 0; s < r->nsites; s++) {
		struct mer_replay_site *rs = &r->sites[s];
		r->gpus += rs->gpus;
		r->gpu_busy_s += rs->gpu_busy_s;
		if (rs->gpus > 0 && r->horizon_s > 0)
			rs->util = rs->gpu_busy_s / (rs->gpus * r->horizon_s);
	}
	if (r->gpus > 0 && r->horizon_s > 0)
		r->gpu_util = r->gpu_busy_s / (r->gpus * r->horizon_s);
	return 0;
}

static int sim_init(struct sim *m, const json_t *fed_doc, char *err,
		    size_t errlen)
{
	const struct mer_trace *tr = m->tr;
	struct mer_replay_result *r = m->r;
	int rv;

	if ((rv = mer_fed_from_json(fed_doc, NULL, &m->fed, err, errlen)))
		return rv;
	struct mer_fed *fed = m->fed;
	m->nk = fed->nkinds;
	m->nsites = fed->nsites;
	for (size_t s = 0; s < fed->nsites; s++)
		m->npools += fed->sites[s].npools;
	size_t np = m->npools, nk = m->nk, n = m->nsites;
	m->pool0 = calloc(n + 1, sizeof(size_t));
	m->porder = calloc(np + 1, sizeof(uint32_t));
	m->psite = calloc(np + 1, sizeof(uint32_t));
	m->pools = calloc(np + 1, sizeof(*m->pools));
	m->share = calloc(n + 1, sizeof(double));
	m->cap = calloc(np * nk + 1, sizeof(double));
	m->used = calloc(np * nk + 1, sizeof(double));
	m->free0 = calloc(np * nk + 1, sizeof(double));
	m->fu0 = calloc(np * nk + 1, sizeof(double));
	m->freed = calloc(n + 1, 1);
	m->freed_list = calloc(n + 1, sizeof(uint32_t));
	m->cs = calloc(n + 1, sizeof(*m->cs));
	m->jobs = calloc(tr->njobs + 1, sizeof(*m->jobs));
	m->pend = calloc(tr->njobs + 1, sizeof(size_t));
	m->cand = calloc(tr->njobs + 1, sizeof(size_t));
	r->sites = mer_arena_alloc(&r->arena, (n + 1) * sizeof(*r->sites));
	r->job0 = mer_arena_alloc(&r->arena, (tr->njobs + 1) * sizeof(size_t));
	r->jct_s = mer_arena_alloc(&r->arena, (tr->njobs + 1) * sizeof(double));
	if (!m->pool0 || !m->porder || !m->psite || !m->pools || !m->share ||
	    !m->cap || !m->used || !m->free0 || !m->fu0 || !m->freed ||
	    !m->freed_list || !m->cs || !m->jobs || !m->pend || !m->cand ||
	    !r->sites || !r->job0 || !r->jct_s)
		return MER_ENOMEM;
	size_t p = 0;
	for (size_t s = 0; s < n; s++) {
		struct mer_site *site = &fed->sites[s];
		m->pool0[s] = p;
		m->share[s] = site->shared_fraction;
		/* agents report every few seconds in the replay: never stale */
		site->last_heartbeat = 0;
		r->sites[s].name = mer_arena_strdup(&r->arena, site->name);
		r->sites[s].region =
		    mer_arena_strdup(&r->arena, fed->regions[site->ridx]);
		if (!r->sites[s].name || !r->sites[s].region)
			return MER_ENOMEM;
		for (size_t k = 0; k < site->npools; k++) {
			struct mer_pool *pl = &site->pools[k];
			m->pools[p + k] = pl;
			m->psite[p + k] = (uint32_t)s;
			size_t j = k;
			m->porder[p + j] = (uint32_t)(p + k);
			while (j > 0 &&
			       m->pools[m->porder[p + j - 1]]->est_wait_s >
				   pl->est_wait_s) {
				m->porder[p + j] = m->porder[p + j - 1];
				j--;
			}
			m->porder[p + j] = (uint32_t)(p + k);
			for (size_t q = 0; q < nk; q++) {
				struct mer_res *res = &pl->res[q];
				size_t x = (p + k) * nk + q;
				if (!res->present)
					continue;
				/* no preemption in the replay */
				for (int c = 0; c < MER_PRIO_COUNT; c++)
					res->preemptible[c] = 0;
				m->cap[x] = res->usable;
				m->free0[x] = res->free;
				m->fu0[x] = res->federation_used;
				if (strncmp(fed->kinds[q], "gpu:", 4) == 0)
					r->sites[s].gpus += res->usable;
			}
		}
		p += site->npools;
	}
	m->pool0[n] = p;
	r->nsites = n;
	size_t total = 0;
	for (size_t j = 0; j < tr->njobs; j++) {
		r->job0[j] = total;
		total += tr->jobs[j].job->nstages;
		r->jct_s[j] = -1;
	}
	r->stage = mer_arena_alloc(&r->arena, (total + 1) * sizeof(*r->stage));
	if (!r->stage)
		return MER_ENOMEM;
	for (size_t j = 0; j < tr->njobs; j++) {
		const struct mer_job *job = tr->jobs[j].job;
		struct sjob *sj = &m->jobs[j];
		sj->st = calloc(job->nstages, sizeof(*sj->st));
		if (!sj->st)
			return MER_ENOMEM;
		sj->left = job->nstages;
		sj->stamp = (size_t)-1;
		if ((sj->tenant = tenant_of(m, job->tenant)) < 0)
			return MER_ENOMEM;
		for (size_t i = 0; i < job->nstages; i++) {
			sj->st[i].deps_left = (unsigned)job->stages[i].nafter;
			rec(m, j, i)->site = -1;
		}
		if ((rv = ev_push(m, tr->jobs[j].at_s, EV_ARRIVAL, (uint32_t)j,
				  0)))
			return rv;
	}
	m->tfreed = calloc(m->nten + 1, 1);
	return m->tfreed ? 0 : MER_ENOMEM;
}

static void sim_free(struct sim *m)
{
	for (size_t j = 0; m->jobs && j < m->tr->njobs; j++) {
		for (size_t i = 0;
		     m->jobs[j].st && i < m->tr->jobs[j].job->nstages; i++) {
			free(m->jobs[j].st[i].takes);
			free(m->jobs[j].st[i].tags);
		}
		free(m->jobs[j].st);
	}
	for (size_t i = 0; i < m->nten; i++)
		free(m->ten[i].gpus);
	free(m->ten);
	free(m->jobs);
	free(m->pend);
	free(m->cand);
	free(m->heap);
	free(m->pool0);
	free(m->porder);
	free(m->psite);
	free(m->pools);
	free(m->share);
	free(m->cap);
	free(m->used);
	free(m->free0);
	free(m->fu0);
	free(m->freed);
	free(m->freed_list);
	free(m->tfreed);
	free(m->cs);
	mer_engine_free(m->eng);
	mer_fed_free(m->fed);
}

void mer_replay_result_free(struct mer_replay_result *r)
{
	if (!r)
		return;
	struct mer_arena a = r->arena;
	mer_arena_free(&a);
}

int mer_replay_run(const json_t *fed_doc, const struct mer_trace *tr,
		   const struct mer_policy *pol,
		   const struct mer_replay_opts *opts,
		   struct mer_replay_result **out, char *err, size_t errlen)
{
	struct mer_arena a = {0};
	struct mer_replay_result *r;
	struct sim m;
	int rv, cut = 0;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (!opts || opts->policy < 0 || opts->policy >= MER_RP_COUNT) {
		snprintf(err, errlen, "policy: unknown");
		return MER_EINVAL;
	}
	r = mer_arena_alloc(&a, sizeof(*r));
	if (!r)
		return MER_ENOMEM;
	r->arena = a;
	r->policy = opts->policy;
	memset(&m, 0, sizeof(m));
	m.tr = tr;
	m.pol = pol;
	m.o = *opts;
	m.rng = opts->seed;
	m.r = r;
	if ((rv = sim_init(&m, fed_doc, err, errlen)))
		goto out;
	while (m.nheap) {
		double t = m.heap[0].t;
		if (m.o.max_time_s > 0 && t > m.o.max_time_s) {
			cut = 1;
			break;
		}
		m.now = t;
		m.round++;
		m.ncand = 0;
		for (size_t f = 0; f < m.nfreed; f++)
			m.freed[m.freed_list[f]] = 0;
		m.nfreed = 0;
		memset(m.tfreed, 0, m.nten);
		while (m.nheap && m.heap[0].t == t) {
			struct event e = ev_pop(&m);
			if (e.type == EV_ARRIVAL)
				on_arrival(&m, e.job);
			else
				on_end(&m, e.job, e.stage);
		}
		if ((rv = place_round(&m)))
			goto out;
		r->rounds++;
	}
	rv = summarize(&m, cut);
out:
	sim_free(&m);
	if (rv) {
		mer_replay_result_free(r);
		return rv;
	}
	*out = r;
	return 0;
}

/* ---- output ---- */

void mer_replay_print_table(FILE *f, struct mer_replay_result *const *r,
			    size_t n)
{
	fprintf(f, "%-16s %6s %6s %8s %13s %10s %11s %9s %9s %9s %7s %9s\n",
		"policy", "jobs", "done", "unplaced", "compute_usd",
		"egress_TB", "egress_usd", "jct_mean", "jct_p95", "wait_mean",
		"gpu_use", "residency");
	fprintf(f, "%-16s %6s %6s %8s %13s %10s %11s %9s %9s %9s %7s %9s\n", "",
		"", "", "", "", "", "", "h", "h", "h", "", "violated");
	for (size_t i = 0; i < n; i++) {
		const struct mer_replay_result *x = r[i];
		fprintf(f,
			"%-16s %6zu %6zu %8zu %13.2f %10.3f %11.2f %9.2f "
			"%9.2f %9.3f %6.1f%% %9zu\n",
			mer_replay_policy_name(x->policy), x->jobs,
			x->jobs_completed, x->jobs_unplaced, x->compute_usd,
			x->egress_bytes / 1e12, x->egress_usd,
			x->jct_mean_s / 3600, x->jct_p95_s / 3600,
			x->wait_mean_s / 3600, x->gpu_util * 100,
			x->residency_violations);
	}
}

void mer_replay_print_sites(FILE *f, struct mer_replay_result *const *r,
			    size_t n, size_t max_sites)
{
	if (n == 0)
		return;
	size_t ns = r[0]->nsites;
	if (max_sites && ns > max_sites)
		ns = max_sites;
	fprintf(f, "%-20s %-16s %6s", "GPU use by site", "region", "gpus");
	for (size_t i = 0; i < n; i++)
		fprintf(f, " %16s", mer_replay_policy_name(r[i]->policy));
	fputc('\n', f);
	for (size_t s = 0; s < ns; s++) {
		const struct mer_replay_site *x = &r[0]->sites[s];
		fprintf(f, "%-20s %-16s %6.0f", x->name, x->region, x->gpus);
		for (size_t i = 0; i < n; i++)
			fprintf(f, " %15.1f%%", r[i]->sites[s].util * 100);
		fputc('\n', f);
	}
	if (ns < r[0]->nsites)
		fprintf(f, "(%zu more sites in the per-site CSV)\n",
			r[0]->nsites - ns);
}

void mer_replay_write_csv(FILE *f, struct mer_replay_result *const *r, size_t n)
{
	fprintf(f, "policy,jobs,jobs_completed,jobs_unplaced,stages,"
		   "stages_unplaced,compute_usd,egress_bytes,egress_usd,"
		   "jct_mean_s,jct_p95_s,wait_mean_s,gpu_utilization,"
		   "residency_violations,horizon_s,engine_calls,mismatches\n");
	for (size_t i = 0; i < n; i++) {
		const struct mer_replay_result *x = r[i];
		fprintf(f,
			"%s,%zu,%zu,%zu,%zu,%zu,%.4f,%.0f,%.4f,%.1f,%.1f,%.1f,"
			"%.6f,%zu,%.1f,%zu,%zu\n",
			mer_replay_policy_name(x->policy), x->jobs,
			x->jobs_completed, x->jobs_unplaced, x->stages,
			x->stages_unplaced, x->compute_usd, x->egress_bytes,
			x->egress_usd, x->jct_mean_s, x->jct_p95_s,
			x->wait_mean_s, x->gpu_util, x->residency_violations,
			x->horizon_s, x->engine_calls, x->mismatches);
	}
}

void mer_replay_write_sites_csv(FILE *f, struct mer_replay_result *const *r,
				size_t n)
{
	fprintf(f, "policy,site,region,gpus,gpu_busy_h,utilization,"
		   "compute_usd,stages\n");
	for (size_t i = 0; i < n; i++) {
		for (size_t s = 0; s < r[i]->nsites; s++) {
			const struct mer_replay_site *x = &r[i]->sites[s];
			fprintf(f, "%s,%s,%s,%.0f,%.3f,%.6f,%.4f,%zu\n",
				mer_replay_policy_name(r[i]->policy), x->name,
				x->region, x->gpus, x->gpu_busy_s / 3600,
				x->util, x->compute_usd, x->stages);
		}
	}
}
