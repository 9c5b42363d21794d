/*
 * Seeded federations, policies and job traces for the replay simulator.
 * Everything comes from one splitmix64 stream per document, so a seed and
 * the options fix the output byte for byte. Not a model of any real
 * fleet: the mix and ranges are written down in docs/SIMULATOR.md.
 */
#include "policy/tracegen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char *const region_names[] = {
    "cn-north-1",   "eu-west-1", "us-east-1",	   "cn-east-1",
    "eu-central-1", "us-west-2", "ap-southeast-1", "ap-northeast-1",
};
#define NAMED_REGIONS 8

static const char *const models[] = {"a800", "h800", "a100", "l40s"};
static const double model_price[] = {2.0, 3.0, 1.6, 0.8};
#define NMODELS 4

static const char *const tenants[] = {"acme",	  "globex",    "initech",
				      "umbrella", "health-eu", "cn-data"};
#define NTENANTS 6

struct rng {
	uint64_t s;
};

static uint64_t next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double unif(struct rng *r)
{
	return (double)(next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static double between(struct rng *r, double lo, double hi)
{
	return lo + (hi - lo) * unif(r);
}

static unsigned pick(struct rng *r, unsigned n)
{
	return (unsigned)(next(r) % n);
}

/* Rounded to a whole number so the documents read cleanly. */
static double whole(double x)
{
	return floor(x + 0.5);
}

void mer_tracegen_defaults(struct mer_tracegen_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->seed = 1;
	o->sites = 24;
	o->regions = 6;
	o->hours = 24;
	o->jobs_per_hour = 10;
	o->epoch = 1767225600; /* 2026-01-01T00:00:00Z */
}

static int check(const struct mer_tracegen_opts *o)
{
	if (o->sites < 1 || o->sites > 100000 || o->regions < 1 ||
	    o->regions > o->sites || o->regions > 1000 || !(o->hours > 0) ||
	    o->hours > 24 * 365 || !(o->jobs_per_hour > 0) ||
	    o->jobs_per_hour > 1e6)
		return MER_EINVAL;
	return 0;
}

static void region_name(unsigned i, char *buf, size_t n)
{
	if (i < NAMED_REGIONS)
		snprintf(buf, n, "%s", region_names[i]);
	else
		snprintf(buf, n, "region-%03u", i);
}

/* The tag data made in a region must keep, or NULL. */
static const char *region_tag(const char *region)
{
	if (strncmp(region, "cn-", 3) == 0)
		return "pii-cn";
	if (strncmp(region, "eu-", 3) == 0)
		return "gdpr";
	return NULL;
}

static json_t *resource(double total, double free)
{
	return json_pack("{s:f,s:f}", "total", total, "free", free);
}

static json_t *gen_site(struct rng *r, unsigned idx, const char *region,
			double *gpus_out)
{
	char name[64], kind[32];
	int onprem = unif(r) < 0.5;
	unsigned m1 = pick(r, NMODELS), m2 = pick(r, NMODELS);
	static const double sizes[] = {16, 32, 64, 128};
	double gpus = sizes[pick(r, 4)], free_frac = between(r, 0.6, 1.0);
	double markup = onprem ? 1.0 : 1.3;

	snprintf(name, sizeof(name), "%s-s%03u", region, idx);
	json_t *gres = json_object(), *gprice = json_object();
	json_object_set_new(gres, "cpu",
			    resource(gpus * 16, whole(gpus * 16 * free_frac)));
	json_object_set_new(
	    gres, "memory_mb",
	    resource(gpus * 262144, whole(gpus * 262144 * free_frac)));
	/* one model, or two splitting the pool */
	unsigned nm = m1 == m2 ? 1 : 2;
	for (unsigned k = 0; k < nm; k++) {
		unsigned m = k ? m2 : m1;
		double g = gpus / nm;
		snprintf(kind, sizeof(kind), "gpu:%s", models[m]);
		json_object_set_new(gres, kind,
				    resource(g, whole(g * free_frac)));
		json_object_set_new(
		    gprice, models[m],
		    json_real(whole(model_price[m] * markup *
				    between(r, 0.8, 1.2) * 100) /
			      100));
	}
	*gpus_out = gpus;
	double u = unif(r);
	const char *fab = u < (onprem ? 0.7 : 0.3) ? "ib"
			  : u < 0.85		   ? "roce"
						   : "eth";
	double cpus = 512 * (1 + pick(r, 4));
	/* draws in a fixed order: C leaves the order of arguments open */
	double gwait = whole(between(r, 60, 1800));
	double cfree = whole(cpus * between(r, 0.5, 1.0));
	double cwait = whole(between(r, 30, 600));
	double share = whole(between(r, 0.5, 1.0) * 10) / 10;
	double core = whole(between(r, 0.01, 0.04) * 1000) / 1000;
	double egress = onprem ? whole(between(r, 0, 0.02) * 1000) / 1000
			       : whole(between(r, 0.05, 0.09) * 1000) / 1000;
	static const double wans[] = {10, 25, 100};
	double wan = wans[pick(r, 3)];
	json_t *pools = json_pack(
	    "[{s:s,s:o,s:f,s:[s]},{s:s,s:{s:o,s:o},s:f,s:[s]}]", "name", "gpu",
	    "resources", gres, "est_wait_s", gwait, "fabric", fab, "name",
	    "cpu", "resources", "cpu", resource(cpus, cfree), "memory_mb",
	    resource(cpus * 8192, whole(cpus * 8192 * 0.9)), "est_wait_s",
	    cwait, "fabric", "eth");
	return json_pack(
	    "{s:s,s:s,s:{s:s},s:s,s:f,s:o,s:{s:o,s:f,s:f},s:f,s:[]}", "name",
	    name, "region", region, "labels", "provider",
	    onprem ? "onprem" : "cloud", "scheduler",
	    onprem ? "slurm" : "kubernetes", "shared_fraction",
	    onprem ? share : 1.0, "pools", pools, "prices", "gpu_hour", gprice,
	    "core_hour", core, "egress_gb", egress, "wan_gbps", wan,
	    "datasets");
}

static void add_dataset(json_t *site, const char *name, double bytes,
			const char *tag)
{
	json_t *tags = json_array();
	if (tag)
		json_array_append_new(tags, json_string(tag));
	json_array_append_new(json_object_get(site, "datasets"),
			      json_pack("{s:s,s:f,s:o}", "name", name, "bytes",
					bytes, "tags", tags));
}

int mer_tracegen_federation(const struct mer_tracegen_opts *o, json_t **out)
{
	struct rng r = {o->seed * 2 + 1};
	char reg[32], rb[32], name[64];
	double gpus;

	*out = NULL;
	if (check(o))
		return MER_EINVAL;
	json_t *sites = json_array(), *links = json_array();
	if (!sites || !links)
		goto nomem;
	for (unsigned s = 0; s < o->sites; s++) {
		region_name(s % o->regions, reg, sizeof(reg));
		json_t *site = gen_site(&r, s, reg, &gpus);
		if (!site || json_array_append_new(sites, site))
			goto nomem;
	}
	/* The catalog: corpora, tagged records kept in their region, and
	 * trained models to serve; about one dataset per two sites. */
	unsigned nd = o->sites / 2 > 6 ? o->sites / 2 : 6;
	for (unsigned d = 0; d < nd; d++) {
		unsigned s = pick(&r, o->sites);
		json_t *site = json_array_get(sites, s);
		const char *region =
		    json_string_value(json_object_get(site, "region"));
		const char *tag = region_tag(region);
		switch (d % 3) {
		case 0: {
			snprintf(name, sizeof(name), "corpus-%03u", d);
			double b = whole(between(&r, 1, 40)) * 1e12;
			add_dataset(site, name, b, NULL);
			/* a second replica elsewhere, now and then */
			unsigned s2 = pick(&r, o->sites);
			if (unif(&r) < 0.3 && s2 != s)
				add_dataset(json_array_get(sites, s2), name, b,
					    NULL);
			break;
		}
		case 1:
			snprintf(name, sizeof(name), "records-%03u", d);
			add_dataset(site, name,
				    whole(between(&r, 0.5, 10)) * 1e12, tag);
			break;
		default:
			snprintf(name, sizeof(name), "model-%03u", d);
			add_dataset(site, name,
				    whole(between(&r, 20, 300)) * 1e9, NULL);
			break;
		}
	}
	for (unsigned a = 0; a < o->regions; a++) {
		for (unsigned b = a + 1; b < o->regions; b++) {
			region_name(a, reg, sizeof(reg));
			region_name(b, rb, sizeof(rb));
			int near = strncmp(reg, rb, 3) == 0;
			double gbps = near ? whole(between(&r, 10, 40))
					   : whole(between(&r, 2, 10));
			double eg = whole(between(&r, near ? 0 : 0.01,
						  near ? 0.01 : 0.05) *
					  1000) /
				    1000;
			json_t *l =
			    json_pack("{s:s,s:s,s:f,s:f}", "from", reg, "to",
				      rb, "gbps", gbps, "egress_gb", eg);
			if (!l || json_array_append_new(links, l))
				goto nomem;
		}
	}
	*out = json_pack("{s:o,s:o,s:{s:{s:f,s:f},s:{s:f,s:f}}}", "sites",
			 sites, "links", links, "defaults", "intra_region",
			 "gbps", 100.0, "egress_gb", 0.0, "inter_region",
			 "gbps", 5.0, "egress_gb", 0.02);
	return *out ? 0 : MER_ENOMEM;
nomem:
	json_decref(sites);
	json_decref(links);
	return MER_ENOMEM;
}

int mer_tracegen_policy(const struct mer_tracegen_opts *o, json_t **out)
{
	char reg[32];
	json_t *cn = json_array(), *eu = json_array(), *res = json_array();

	*out = NULL;
	if (check(o)) {
		json_decref(cn);
		json_decref(eu);
		json_decref(res);
		return MER_EINVAL;
	}
	for (unsigned i = 0; i < o->regions; i++) {
		region_name(i, reg, sizeof(reg));
		const char *tag = region_tag(reg);
		if (tag)
			json_array_append_new(tag[0] == 'p' ? cn : eu,
					      json_string(reg));
	}
	if (json_array_size(cn))
		json_array_append_new(res, json_pack("{s:s,s:O}", "tag",
						     "pii-cn", "regions", cn));
	if (json_array_size(eu))
		json_array_append_new(
		    res, json_pack("{s:s,s:O}", "tag", "gdpr", "regions", eu));
	json_decref(cn);
	json_decref(eu);
	*out = json_pack(
	    "{s:s,s:s,s:{s:f,s:f,s:f},s:o,s:f}", "version", "replay-1",
	    "description",
	    "Generated with the federation: money plus time at 10 USD/h for "
	    "batch work, tagged data kept in its regions.",
	    "value_of_time_usd_per_hour", "online", 100.0, "batch", 10.0,
	    "best-effort", 1.0, "residency", res, "pending_timeout_s", 0.0);
	return *out ? 0 : MER_ENOMEM;
}

/* The catalog's datasets whose names start with prefix. */
static size_t datasets_with(const json_t *fed, const char *prefix,
			    const char **names, double *bytes, size_t max)
{
	size_t n = 0, i, k;
	json_t *site, *ds;

	json_array_foreach (json_object_get(fed, "sites"), i, site) {
		json_array_foreach (json_object_get(site, "datasets"), k, ds) {
			const char *nm =
			    json_string_value(json_object_get(ds, "name"));
			if (!nm || strncmp(nm, prefix, strlen(prefix)) != 0)
				continue;
			int dup = 0;
			for (size_t x = 0; x < n && !dup; x++)
				dup = strcmp(names[x], nm) == 0;
			if (dup || n == max)
				continue;
			names[n] = nm;
			bytes[n++] =
			    json_number_value(json_object_get(ds, "bytes"));
		}
	}
	return n;
}

struct catalog {
	const char *corpus[512], *records[512], *model[512];
	double corpus_b[512], records_b[512], model_b[512];
	size_t ncorpus, nrecords, nmodel;
	char regions[64][32];
	size_t nregions;
	int have[NMODELS];
};

/* A data set for prep or training: tagged records 30% of the time. */
static void pick_data(struct rng *r, const struct catalog *c, const char **name,
		      double *bytes)
{
	if (c->nrecords && (unif(r) < 0.3 || !c->ncorpus)) {
		unsigned k = pick(r, (unsigned)c->nrecords);
		*name = c->records[k];
		*bytes = c->records_b[k];
	} else if (c->ncorpus) {
		unsigned k = pick(r, (unsigned)c->ncorpus);
		*name = c->corpus[k];
		*bytes = c->corpus_b[k];
	} else {
		*name = NULL;
		*bytes = 0;
	}
}

/* Acceptable GPU models present in the federation, best first. */
static json_t *gpu_models(struct rng *r, const struct catalog *c, int small)
{
	json_t *l = json_array();
	static const unsigned big[] = {1, 0, 2}, sm[] = {3, 2, 0};
	const unsigned *order = small ? sm : big;
	unsigned start = pick(r, 3);

	for (unsigned k = 0; k < 3; k++) {
		unsigned m = order[(start + k) % 3];
		if (c->have[m])
			json_array_append_new(l, json_string(models[m]));
	}
	for (unsigned m = 0; json_array_size(l) == 0 && m < NMODELS; m++)
		if (c->have[m])
			json_array_append_new(l, json_string(models[m]));
	return l;
}

static json_t *input(const char *name)
{
	return json_pack("{s:s}", "name", name);
}

static json_t *gen_job(struct rng *r, const struct catalog *c, unsigned id,
		       json_t **truth)
{
	char name[64];
	const char *ds = NULL;
	double bytes = 0, u = unif(r);
	const char *tenant = tenants[pick(r, NTENANTS)];
	json_t *stages = json_array();

	*truth = json_object();
	/* estimates are off by -30%..+50% */
#define TRUE_S(stage, est)                                                     \
	json_object_set_new(*truth, stage,                                     \
			    json_real(whole((est)*between(r, 0.7, 1.5))))
	if (u < 0.25) {
		/* pipeline: prep -> train -> serve */
		pick_data(r, c, &ds, &bytes);
		double shards = whole(bytes * between(r, 0.05, 0.2));
		double dprep = whole(between(r, 1, 4) * 3600);
		double dtrain = whole(between(r, 2, 16) * 3600);
		double dserve = whole(between(r, 4, 24) * 3600);
		unsigned g = 8u << pick(r, 3);
		double pcpu = (double)(32 << pick(r, 3));
		json_t *tmodels = gpu_models(r, c, 0);
		double ckpt = whole(between(r, 20, 300)) * 1e9;
		int sgpus = 1 + (int)pick(r, 2);
		json_t *smodels = gpu_models(r, c, 1);
		int reps = 1 + (int)pick(r, 4);
		const char *near = c->regions[pick(r, (unsigned)c->nregions)];
		json_t *prep = json_pack(
		    "{s:s,s:s,s:{s:f,s:f},s:[],s:[{s:s,s:f}],s:f}", "name",
		    "prep", "kind", "data-prep", "resources", "cpu", pcpu,
		    "memory_mb", 262144.0, "inputs", "outputs", "name",
		    "shards", "bytes", shards, "duration_s", dprep);
		if (ds)
			json_array_append_new(json_object_get(prep, "inputs"),
					      input(ds));
		else
			json_object_set_new(prep, "inputs", json_array());
		json_array_append_new(stages, prep);
		json_array_append_new(
		    stages,
		    json_pack("{s:s,s:s,s:[s],s:{s:f,s:f,s:{s:i,s:o}},s:b,"
			      "s:[{s:s}],s:[{s:s,s:f}],s:f}",
			      "name", "train", "kind", "training", "after",
			      "prep", "resources", "cpu", 8.0 * g, "memory_mb",
			      65536.0 * g, "gpu", "count", (int)g, "models",
			      tmodels, "gang", g >= 16, "inputs", "name",
			      "shards", "outputs", "name", "checkpoint",
			      "bytes", ckpt, "duration_s", dtrain));
		json_array_append_new(
		    stages,
		    json_pack("{s:s,s:s,s:[s],s:{s:f,s:f,s:{s:i,s:o}},s:i,"
			      "s:[s],s:[{s:s}],s:f}",
			      "name", "serve", "kind", "inference", "after",
			      "train", "resources", "cpu", 8.0, "memory_mb",
			      65536.0, "gpu", "count", sgpus, "models", smodels,
			      "replicas", reps, "near", near, "inputs", "name",
			      "checkpoint", "duration_s", dserve));
		TRUE_S("prep", dprep);
		TRUE_S("train", dtrain);
		TRUE_S("serve", dserve);
		snprintf(name, sizeof(name), "pipeline-%05u", id);
		return json_pack("{s:s,s:s,s:s,s:o}", "name", name, "tenant",
				 tenant, "priority", "batch", "stages", stages);
	}
	if (u < 0.55) {
		/* one training job on a data set */
		pick_data(r, c, &ds, &bytes);
		double d = whole(between(r, 1, 12) * 3600);
		unsigned g = 1u << pick(r, 4);
		json_t *models = gpu_models(r, c, 0);
		double wbytes = whole(between(r, 5, 100)) * 1e9;
		json_t *st = json_pack(
		    "{s:s,s:s,s:{s:f,s:f,s:{s:i,s:o}},s:[],s:[{s:s,s:f}],s:f}",
		    "name", "train", "kind", "training", "resources", "cpu",
		    8.0 * g, "memory_mb", 65536.0 * g, "gpu", "count", (int)g,
		    "models", models, "inputs", "outputs", "name", "weights",
		    "bytes", wbytes, "duration_s", d);
		if (ds)
			json_array_append_new(json_object_get(st, "inputs"),
					      input(ds));
		json_array_append_new(stages, st);
		TRUE_S("train", d);
		snprintf(name, sizeof(name), "train-%05u", id);
		return json_pack("{s:s,s:s,s:s,s:o}", "name", name, "tenant",
				 tenant, "priority", "batch", "stages", stages);
	}
	if (u < 0.85) {
		/* best effort: small, preemptible, often CPU only */
		double d = whole(between(r, 0.5, 3) * 3600);
		json_t *st;
		if (unif(r) < 0.5) {
			double cpu = (double)(4 << pick(r, 4));
			st = json_pack("{s:s,s:s,s:{s:f,s:f},s:b,s:f}", "name",
				       "sweep", "kind", "generic", "resources",
				       "cpu", cpu, "memory_mb", 16384.0,
				       "preemptible", 1, "duration_s", d);
		} else {
			int gpus = 1 + (int)pick(r, 4);
			json_t *models = gpu_models(r, c, 1);
			st = json_pack(
			    "{s:s,s:s,s:{s:f,s:f,s:{s:i,s:o}},s:b,s:f}", "name",
			    "sweep", "kind", "generic", "resources", "cpu", 8.0,
			    "memory_mb", 32768.0, "gpu", "count", gpus,
			    "models", models, "preemptible", 1, "duration_s",
			    d);
		}
		if (c->nmodel)
			json_object_set_new(
			    st, "inputs",
			    json_pack(
				"[o]",
				input(c->model[pick(r, (unsigned)c->nmodel)])));
		json_array_append_new(stages, st);
		TRUE_S("sweep", d);
		snprintf(name, sizeof(name), "sweep-%05u", id);
		return json_pack("{s:s,s:s,s:s,s:o}", "name", name, "tenant",
				 tenant, "priority", "best-effort", "stages",
				 stages);
	}
	/* a long-running online service */
	double d = whole(between(r, 24, 72) * 3600);
	json_t *models = gpu_models(r, c, 1);
	int reps = 2 + (int)pick(r, 5);
	const char *near = c->regions[pick(r, (unsigned)c->nregions)];
	json_t *st =
	    json_pack("{s:s,s:s,s:{s:f,s:f,s:{s:i,s:o}},s:i,s:[s],s:f}", "name",
		      "serve", "kind", "inference", "resources", "cpu", 8.0,
		      "memory_mb", 65536.0, "gpu", "count", 1, "models", models,
		      "replicas", reps, "near", near, "duration_s", d);
	if (c->nmodel)
		json_object_set_new(
		    st, "inputs",
		    json_pack("[o]",
			      input(c->model[pick(r, (unsigned)c->nmodel)])));
	json_array_append_new(stages, st);
	TRUE_S("serve", d);
#undef TRUE_S
	snprintf(name, sizeof(name), "service-%05u", id);
	return json_pack("{s:s,s:s,s:s,s:o}", "name", name, "tenant", tenant,
			 "priority", "online", "stages", stages);
}

int mer_tracegen_trace(const struct mer_tracegen_opts *o, const json_t *fed,
		       json_t **out)
{
	struct rng r = {o->seed * 2 + 2};
	struct catalog *c;
	json_t *recs;
	size_t i;
	json_t *site;

	*out = NULL;
	if (check(o) || !json_is_object(fed))
		return MER_EINVAL;
	c = calloc(1, sizeof(*c));
	recs = json_array();
	if (!c || !recs) {
		free(c);
		json_decref(recs);
		return MER_ENOMEM;
	}
	c->ncorpus = datasets_with(fed, "corpus-", c->corpus, c->corpus_b, 512);
	c->nrecords =
	    datasets_with(fed, "records-", c->records, c->records_b, 512);
	c->nmodel = datasets_with(fed, "model-", c->model, c->model_b, 512);
	json_array_foreach (json_object_get(fed, "sites"), i, site) {
		const char *reg =
		    json_string_value(json_object_get(site, "region"));
		int seen = 0;
		for (size_t k = 0; k < c->nregions && !seen; k++)
			seen = strcmp(c->regions[k], reg) == 0;
		if (!seen && c->nregions < 64)
			snprintf(c->regions[c->nregions++], 32, "%s", reg);
		const json_t *res = json_object_get(
		    json_array_get(json_object_get(site, "pools"), 0),
		    "resources");
		for (unsigned m = 0; m < NMODELS; m++) {
			char kind[32];
			snprintf(kind, sizeof(kind), "gpu:%s", models[m]);
			if (json_object_get(res, kind))
				c->have[m] = 1;
		}
	}
	json_array_append_new(recs, json_pack("{s:I,s:s}", "epoch",
					      (json_int_t)o->epoch, "generator",
					      "meridian tracegen 1"));
	double t = 0, end = o->hours * 3600, rate = o->jobs_per_hour / 3600;
	for (unsigned id = 0;; id++) {
		t += -log(1 - unif(&r)) / rate;
		if (t >= end)
			break;
		json_t *truth = NULL;
		json_t *job = gen_job(&r, c, id, &truth);
		json_t *rec = json_pack("{s:f,s:o,s:o}", "at", whole(t), "job",
					job, "true_duration_s", truth);
		if (!rec || json_array_append_new(recs, rec)) {
			free(c);
			json_decref(recs);
			return MER_ENOMEM;
		}
	}
	free(c);
	*out = recs;
	return 0;
}

int mer_tracegen_write_lines(FILE *f, const json_t *records)
{
	size_t i;
	json_t *v;

	json_array_foreach (records, i, v) {
		if (json_dumpf(v, f, JSON_COMPACT | JSON_SORT_KEYS) ||
		    fputc('\n', f) == EOF)
			return MER_EIO;
	}
	return 0;
}
