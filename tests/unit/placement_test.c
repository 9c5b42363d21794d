/*
 * Table-driven placement scenarios: every tests/fixtures/placement/s-*.json
 * is one case (federation + policy + job [+ extras, batch] + what must come
 * out: sites, statuses, replicas, method, and text that must appear in the
 * explanation). Each case also checks determinism and that the joint plan
 * never costs more than stage-by-stage placement.
 */
#include "common/err.h"
#include "common/json.h"
#include "policy/place.h"
#include "tests/harness.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SCENARIOS 96

static char dir[PATH_MAX];
static char *names[MAX_SCENARIOS];
static size_t nnames;

static int load_fed(const json_t *v, const struct mer_json_doc *doc,
		    struct mer_fed **out, char *err, size_t n)
{
	char p[PATH_MAX * 2];

	if (json_is_string(v)) {
		snprintf(p, sizeof(p), "%s/%s", dir, json_string_value(v));
		return mer_fed_load(p, out, err, n);
	}
	return mer_fed_from_json(v, doc, out, err, n);
}

static int load_policy(const json_t *v, const struct mer_json_doc *doc,
		       struct mer_policy **out, char *err, size_t n)
{
	char p[PATH_MAX * 2];

	if (!v)
		return mer_policy_default(out);
	if (json_is_string(v)) {
		snprintf(p, sizeof(p), "%s/%s", dir, json_string_value(v));
		return mer_policy_load(p, out, err, n);
	}
	return mer_policy_from_json(v, doc, out, err, n);
}

/* Checks one placement against an "expect" object; ctx names it. */
static void check(const char *ctx, const struct mer_placement *pl,
		  const json_t *exp)
{
	json_t *js = mer_placement_to_json(pl, 0);
	char *text = mer_json_dumps(js);
	const json_t *v;
	const char *key;
	json_t *val;
	int bad = 0;

	if (!text) {
		t_fail(__FILE__, __LINE__, "%s: no JSON", ctx);
		json_decref(js);
		return;
	}
	if ((v = json_object_get(exp, "complete")) &&
	    json_is_true(v) != pl->complete) {
		t_fail(__FILE__, __LINE__, "%s: complete=%d", ctx,
		       pl->complete);
		bad = 1;
	}
	if ((v = json_object_get(exp, "method")) &&
	    strcmp(json_string_value(v), pl->method) != 0) {
		t_fail(__FILE__, __LINE__, "%s: method %s, expected %s", ctx,
		       pl->method, json_string_value(v));
		bad = 1;
	}
	json_object_foreach((json_t *)json_object_get(exp, "sites"), key, val)
	{
		int i = mer_job_stage_index(pl->job, key);
		const char *got = i >= 0 && pl->stages[i].site >= 0
				      ? pl->fed->sites[pl->stages[i].site].name
				      : "(none)";
		if (i < 0 || strcmp(got, json_string_value(val)) != 0) {
			t_fail(__FILE__, __LINE__,
			       "%s: stage %s at %s, expected %s", ctx, key, got,
			       json_string_value(val));
			bad = 1;
		}
	}
	json_object_foreach((json_t *)json_object_get(exp, "status"), key, val)
	{
		int i = mer_job_stage_index(pl->job, key);
		static const char *const st[] = {"placed", "pending", "fixed"};
		if (i < 0 ||
		    strcmp(st[pl->stages[i].status], json_string_value(val))) {
			t_fail(__FILE__, __LINE__, "%s: stage %s is %s", ctx,
			       key, i < 0 ? "?" : st[pl->stages[i].status]);
			bad = 1;
		}
	}
	json_object_foreach((json_t *)json_object_get(exp, "replicas"), key,
			    val)
	{
		int i = mer_job_stage_index(pl->job, key);
		const char *site;
		json_t *cnt;
		json_object_foreach(val, site, cnt)
		{
			long long got = 0;
			for (size_t k = 0; i >= 0 && k < pl->stages[i].nshares;
			     k++)
				if (strcmp(
					pl->fed
					    ->sites
						[pl->stages[i].shares[k].site]
					    .name,
					site) == 0)
					got = pl->stages[i].shares[k].replicas;
			if (got != json_integer_value(cnt)) {
				t_fail(__FILE__, __LINE__,
				       "%s: %s has %lld replicas at %s", ctx,
				       key, got, site);
				bad = 1;
			}
		}
	}
	size_t k;
	json_array_foreach(json_object_get(exp, "contains"), k, val)
	{
		if (!strstr(text, json_string_value(val))) {
			t_fail(__FILE__, __LINE__, "%s: missing \"%s\"", ctx,
			       json_string_value(val));
			bad = 1;
		}
	}
	json_array_foreach(json_object_get(exp, "not_contains"), k, val)
	{
		if (strstr(text, json_string_value(val))) {
			t_fail(__FILE__, __LINE__, "%s: has \"%s\"", ctx,
			       json_string_value(val));
			bad = 1;
		}
	}
	if ((v = json_object_get(exp, "joint_better")) && json_is_true(v) &&
	    !(pl->complete && pl->total < pl->stage_by_stage_total - 1)) {
		t_fail(__FILE__, __LINE__,
		       "%s: joint %.4f not better than stage-by-stage %.4f",
		       ctx, pl->total, pl->stage_by_stage_total);
		bad = 1;
	}
	/* Invariants of every placement. */
	if (pl->complete &&
	    pl->total > pl->stage_by_stage_total + 1e-6 * (1 + pl->total)) {
		t_fail(__FILE__, __LINE__,
		       "%s: joint %.4f > stage-by-stage %.4f", ctx, pl->total,
		       pl->stage_by_stage_total);
		bad = 1;
	}
	for (size_t i = 0; i < pl->nstages; i++) {
		const struct mer_stage_result *r = &pl->stages[i];
		if (r->status == MER_STAGE_PLACED &&
		    r->brief[r->site].reason != MER_R_OK) {
			t_fail(__FILE__, __LINE__,
			       "%s: stage %zu at a rejected "
			       "site",
			       ctx, i);
			bad = 1;
		}
	}
	if (bad || getenv("MERIDIAN_PLACEMENT_DUMP")) {
		json_t *small = mer_placement_to_json(pl, 4);
		char *s = json_dumps(small, JSON_INDENT(1) | JSON_SORT_KEYS);
		printf("%s\n", s ? s : "?");
		free(s);
		json_decref(small);
	}
	free(text);
	json_decref(js);
}

struct loaded {
	struct mer_json_doc doc;
	struct mer_fed *fed;
	struct mer_policy *pol;
	struct mer_engine *eng;
	struct mer_job *jobs[8];
	struct mer_place_extras *extras[8];
	struct mer_place_input in[8];
	size_t njobs;
};

static void unload(struct loaded *L)
{
	for (size_t i = 0; i < L->njobs; i++) {
		mer_job_free(L->jobs[i]);
		mer_place_extras_free(L->extras[i]);
	}
	mer_engine_free(L->eng);
	mer_policy_free(L->pol);
	mer_fed_free(L->fed);
	mer_json_doc_free(&L->doc);
	memset(L, 0, sizeof(*L));
}

static int add_job(struct loaded *L, const json_t *job, const json_t *extras,
		   char *err, size_t n)
{
	size_t i = L->njobs;
	int rv;

	if (i == 8)
		return MER_ETOOBIG;
	if ((rv = mer_job_from_json(job, &L->doc, &L->jobs[i], err, n)))
		return rv;
	L->njobs++;
	if ((rv = mer_place_check_job(L->jobs[i], L->fed, err, n)))
		return rv;
	L->in[i].job = L->jobs[i];
	if (extras) {
		rv = mer_place_extras_from_json(extras, &L->doc, &L->extras[i],
						err, n);
		if (rv)
			return rv;
		struct mer_place_extras *x = L->extras[i];
		L->in[i].usage = &x->usage;
		L->in[i].history = x->history;
		L->in[i].nhistory = x->nhistory;
		L->in[i].fixed = x->fixed;
		L->in[i].nfixed = x->nfixed;
		L->in[i].now = x->now;
	}
	return 0;
}

static int load(const char *name, struct loaded *L, char *err, size_t n)
{
	char p[PATH_MAX * 2];
	const json_t *r;
	int rv;

	memset(L, 0, sizeof(*L));
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	if ((rv = mer_json_doc_load(p, 0, 0, &L->doc, err, n)))
		return rv;
	r = L->doc.root;
	if ((rv = load_fed(json_object_get(r, "federation"), &L->doc, &L->fed,
			   err, n)) ||
	    (rv = load_policy(json_object_get(r, "policy"), &L->doc, &L->pol,
			      err, n)) ||
	    (rv = add_job(L, json_object_get(r, "job"),
			  json_object_get(r, "extras"), err, n)))
		return rv;
	size_t k;
	const json_t *b;
	json_array_foreach(json_object_get(r, "batch"), k, b)
	{
		if ((rv = add_job(L, json_object_get(b, "job"),
				  json_object_get(b, "extras"), err, n)))
			return rv;
	}
	return mer_engine_new(L->fed, L->pol, &L->eng);
}

static void run_scenario(size_t idx)
{
	struct loaded L;
	char err[512] = "";
	struct mer_placement *pl[8] = {0};
	const json_t *exp;
	int rv = load(names[idx], &L, err, sizeof(err));

	if (rv) {
		t_fail(__FILE__, __LINE__, "%s: %s (%s)", names[idx], err,
		       mer_strerror(rv));
		unload(&L);
		return;
	}
	exp = json_object_get(L.doc.root, "expect");
	if (!json_is_object(exp)) {
		t_fail(__FILE__, __LINE__, "%s: no expect", names[idx]);
		goto out;
	}
	rv = mer_engine_place_batch(L.eng, L.in, L.njobs, pl);
	if (rv) {
		t_fail(__FILE__, __LINE__, "%s: place: %s", names[idx],
		       mer_strerror(rv));
		goto out;
	}
	check(names[idx], pl[0], exp);
	size_t k;
	const json_t *be;
	json_array_foreach(json_object_get(exp, "batch"), k, be)
	{
		char ctx[300];
		snprintf(ctx, sizeof(ctx), "%s batch[%zu]", names[idx], k);
		if (k + 1 < L.njobs)
			check(ctx, pl[k + 1], be);
	}
	/* Same input, fresh engine: byte-identical explanation. */
	{
		struct mer_engine *e2 = NULL;
		struct mer_placement *again[8] = {0};
		T_OK(mer_engine_new(L.fed, L.pol, &e2));
		rv = mer_engine_place_batch(e2, L.in, L.njobs, again);
		T_EQ_INT(rv, 0);
		for (size_t j = 0; rv == 0 && j < L.njobs; j++) {
			json_t *a = mer_placement_to_json(pl[j], 0);
			json_t *b2 = mer_placement_to_json(again[j], 0);
			char *sa = mer_json_dumps(a), *sb = mer_json_dumps(b2);
			if (!sa || !sb || strcmp(sa, sb) != 0)
				t_fail(__FILE__, __LINE__,
				       "%s: not deterministic", names[idx]);
			free(sa);
			free(sb);
			json_decref(a);
			json_decref(b2);
			mer_placement_free(again[j]);
		}
		mer_engine_free(e2);
	}
out:
	for (size_t j = 0; j < L.njobs; j++)
		mer_placement_free(pl[j]);
	unload(&L);
}

/* The harness takes plain functions: one trampoline per scenario slot. */
#define SC(a, k)                                                               \
	static void sc_##a##_##k(void)                                         \
	{                                                                      \
		run_scenario((a)*8 + (k));                                     \
	}
#define SC8(a)                                                                 \
	SC(a, 0) SC(a, 1) SC(a, 2) SC(a, 3) SC(a, 4) SC(a, 5) SC(a, 6) SC(a, 7)
SC8(0)
SC8(1)
SC8(2)
SC8(3)
SC8(4)
SC8(5)
SC8(6)
SC8(7)
SC8(8)
SC8(9)
SC8(10)
SC8(11)
#define F8(a)                                                                  \
	sc_##a##_0, sc_##a##_1, sc_##a##_2, sc_##a##_3, sc_##a##_4,            \
	    sc_##a##_5, sc_##a##_6, sc_##a##_7
static void (*const trampolines[MAX_SCENARIOS])(void) = {
    F8(0), F8(1), F8(2), F8(3), F8(4),	F8(5),
    F8(6), F8(7), F8(8), F8(9), F8(10), F8(11)};

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_enough_scenarios(void)
{
	/* issue 5 asks for at least 25 table-driven scenarios */
	T_EXPECT(nnames >= 25);
}

int main(int argc, char **argv)
{
	const char *top = getenv("MERIDIAN_TOP");
	struct t_case cases[MAX_SCENARIOS + 1];
	DIR *d;
	struct dirent *de;

	snprintf(dir, sizeof(dir), "%s/tests/fixtures/placement",
		 top ? top : ".");
	d = opendir(dir);
	if (!d) {
		fprintf(stderr, "cannot open %s\n", dir);
		printf("placement: 0 passed, 1 failed\n");
		return 1;
	}
	while ((de = readdir(d)) && nnames < MAX_SCENARIOS) {
		size_t len = strlen(de->d_name);
		if (strncmp(de->d_name, "s-", 2) == 0 && len > 5 &&
		    strcmp(de->d_name + len - 5, ".json") == 0)
			names[nnames++] = strdup(de->d_name);
	}
	closedir(d);
	qsort(names, nnames, sizeof(char *), cmp_name);
	cases[0] = (struct t_case){"enough_scenarios", test_enough_scenarios};
	for (size_t i = 0; i < nnames; i++)
		cases[i + 1] = (struct t_case){names[i], trampolines[i]};
	int rv = t_run("placement", cases, nnames + 1, argc, argv);
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	return rv;
}
