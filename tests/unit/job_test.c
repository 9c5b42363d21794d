/*
 * Job documents: good ones parse (stage order, dataflow links), bad ones
 * fail with an error naming the exact field, and with file:line:column when
 * the text is known. Also the submission check for impossible requests.
 */
#include "common/err.h"
#include "policy/job.h"
#include "policy/place.h"
#include "tests/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *good =
    "{\n"
    "  \"name\": \"llm\", \"tenant\": \"acme\", \"priority\": \"batch\",\n"
    "  \"stages\": [\n"
    "    {\"name\": \"serve\", \"kind\": \"inference\", \"after\": "
    "[\"train\"],\n"
    "     \"resources\": {\"gpu\": {\"count\": 1, \"model\": \"a100\"}},\n"
    "     \"replicas\": 3, \"inputs\": [{\"name\": \"model\"}]},\n"
    "    {\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
    "{\"cpu\": 8},\n"
    "     \"outputs\": [{\"name\": \"shards\", \"bytes\": 1000}]},\n"
    "    {\"name\": \"train\", \"after\": [\"prep\"], \"resources\": "
    "{\"gpu\": {\"count\": 8, \"models\": [\"a800\", \"h800\"]}, "
    "\"fabric\": \"ib\"},\n"
    "     \"inputs\": [{\"name\": \"shards\"}], \"outputs\": [{\"name\": "
    "\"model\", \"bytes\": 10}]}\n"
    "  ]\n"
    "}\n";

static void test_good_job(void)
{
	struct mer_job *job = NULL;
	char err[256] = "";

	T_OK(mer_job_parse("job.json", good, strlen(good), &job, err,
			   sizeof(err)));
	T_EQ_INT(job->nstages, 3);
	/* dependency order: prep, train, serve */
	T_EQ_INT(job->topo[0], 1);
	T_EQ_INT(job->topo[1], 2);
	T_EQ_INT(job->topo[2], 0);
	T_EQ_INT(job->stages[0].replicas, 3);
	T_EQ_INT(job->stages[0].inputs[0].producer, 2);
	T_EQ_INT(job->stages[2].inputs[0].producer, 1);
	T_EQ_INT(job->stages[2].fabric, MER_FABRIC_IB);
	T_EQ_INT(job->stages[2].ngpu_models, 2);
	/* serve needs prep through train */
	T_EQ_INT(job->anc[0 * 3 + 1], 1);
	T_EQ_STR(job->tenant, "acme");
	mer_job_free(job);
}

struct bad {
	const char *name;
	const char *text;
	const char *want; /* must appear in the error */
};

/* Each document is on one line per stage so positions are predictable. */
static const struct bad bad_jobs[] = {
    {"gpu count zero",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1}},"
     "{\"name\":\"b\",\"resources\":{\"cpu\":1}},\n"
     "{\"name\":\"c\",\"resources\":{\"gpu\":{\"count\":0,\"model\":"
     "\"a100\"}}}]}",
     "job.json:2:41: stages[2].resources.gpu.count: must be a positive "
     "integer"},
    {"gpu count string",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"gpu\":"
     "{\"count\":\"8\",\"model\":\"a100\"}}}]}",
     "stages[0].resources.gpu.count: must be a positive integer"},
    {"gpu without model",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"gpu\":"
     "{\"count\":8}}}]}",
     "stages[0].resources.gpu: needs model or a non-empty models list"},
    {"unknown key",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1},"
     "\"gpus\":4}]}",
     "stages[0].gpus: unknown key"},
    {"unknown top key", "{\"name\":\"j\",\"stage\":[]}", "stage: unknown key"},
    {"missing stages", "{\"name\":\"j\"}", "stages: required"},
    {"no stages", "{\"name\":\"j\",\"stages\":[]}",
     "stages: must have 1 to 256 stages"},
    {"missing name", "{\"stages\":[]}", "name: required"},
    {"bad priority",
     "{\"name\":\"j\",\"priority\":\"urgent\",\"stages\":[{\"name\":\"a\","
     "\"resources\":{\"cpu\":1}}]}",
     "priority: must be one of online, batch, best-effort (got \"urgent\")"},
    {"bad kind",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"kind\":\"train\","
     "\"resources\":{\"cpu\":1}}]}",
     "stages[0].kind: must be one of data-prep, training, inference, "
     "generic"},
    {"duplicate stage",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1}},"
     "{\"name\":\"a\",\"resources\":{\"cpu\":1}}]}",
     "stages[1].name: duplicate stage name \"a\" (also stages[0])"},
    {"unknown after",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1}},"
     "{\"name\":\"b\",\"after\":[\"a\",\"trian\"],\"resources\":{\"cpu\":1}}"
     "]}",
     "stages[1].after[1]: unknown stage \"trian\""},
    {"self after",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"after\":[\"a\"],"
     "\"resources\":{\"cpu\":1}}]}",
     "stages[0].after[0]: a stage cannot come after itself"},
    {"cycle",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1}},"
     "{\"name\":\"b\",\"after\":[\"a\",\"c\"],\"resources\":{\"cpu\":1}},"
     "{\"name\":\"c\",\"after\":[\"b\"],\"resources\":{\"cpu\":1}}]}",
     "cycle: b -> c -> b"},
    {"nothing requested",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{}}]}",
     "stages[0].resources: must ask for cpu or gpu"},
    {"negative cpu",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":"
     "-2}}]}",
     "stages[0].resources.cpu: must be a number from 0 to"},
    {"bad fabric",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1,"
     "\"fabric\":\"myrinet\"}}]}",
     "stages[0].resources.fabric: must be one of ib, roce, eth"},
    {"replicas on training",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"replicas\":2,"
     "\"resources\":{\"cpu\":1}}]}",
     "stages[0].replicas: only inference stages have replicas"},
    {"replicas zero",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"kind\":\"inference\","
     "\"replicas\":0,\"resources\":{\"cpu\":1}}]}",
     "stages[0].replicas: must be a positive integer"},
    {"output of a non-ancestor",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1},"
     "\"outputs\":[{\"name\":\"x\",\"bytes\":1}]},{\"name\":\"b\","
     "\"resources\":{\"cpu\":1},\"inputs\":[{\"name\":\"x\"}]}]}",
     "stages[1].inputs[0].name: \"x\" is an output of stage \"a\", which "
     "must be in this stage's after chain"},
    {"duplicate output",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1},"
     "\"outputs\":[{\"name\":\"x\",\"bytes\":1}]},{\"name\":\"b\","
     "\"resources\":{\"cpu\":1},\"outputs\":[{\"name\":\"x\",\"bytes\":1}]}"
     "]}",
     "stages[1].outputs[0].name: duplicate output \"x\""},
    {"output without bytes",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1},"
     "\"outputs\":[{\"name\":\"x\"}]}]}",
     "stages[0].outputs[0].bytes: required"},
    {"region input without bytes",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"cpu\":1},"
     "\"inputs\":[{\"name\":\"x\",\"region\":\"eu-west-1\"}]}]}",
     "stages[0].inputs[0].bytes: required with region"},
    {"bad stage name",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"has space\",\"resources\":"
     "{\"cpu\":1}}]}",
     "stages[0].name: must be 1-63 characters"},
    {"empty allow list",
     "{\"name\":\"j\",\"constraints\":{\"sites\":{\"allow\":[]}},\"stages\":"
     "[{\"name\":\"a\",\"resources\":{\"cpu\":1}}]}",
     "constraints.sites.allow: must not be empty"},
    {"negative budget",
     "{\"name\":\"j\",\"constraints\":{\"budget_usd\":-1},\"stages\":"
     "[{\"name\":\"a\",\"resources\":{\"cpu\":1}}]}",
     "constraints.budget_usd: must be a number from 0 to"},
    {"duplicate in list",
     "{\"name\":\"j\",\"stages\":[{\"name\":\"a\",\"resources\":{\"gpu\":"
     "{\"count\":1,\"models\":[\"a100\",\"a100\"]}}}]}",
     "stages[0].resources.gpu.models[1]: duplicate \"a100\""},
    {"syntax error", "{\"name\": \"j\",\n  \"stages\": [,]}", "job.json:2:"},
    {"not an object", "[1,2]", "job.json:1:1: must be an object"},
};

static void test_bad_jobs(void)
{
	for (size_t i = 0; i < sizeof(bad_jobs) / sizeof(bad_jobs[0]); i++) {
		const struct bad *b = &bad_jobs[i];
		struct mer_job *job = NULL;
		char err[512] = "";
		int rv = mer_job_parse("job.json", b->text, strlen(b->text),
				       &job, err, sizeof(err));
		if (rv == 0 || job != NULL || !strstr(err, b->want))
			t_fail(__FILE__, __LINE__,
			       "%s: rv=%d err=\"%s\", want \"%s\"", b->name, rv,
			       err, b->want);
		/* every error from a file names a position */
		if (rv && strncmp(err, "job.json:", 9) != 0)
			t_fail(__FILE__, __LINE__, "%s: no position: %s",
			       b->name, err);
		mer_job_free(job);
	}
}

static void test_errors_without_text(void)
{
	/* From an API body already parsed: the field alone. */
	json_error_t je;
	json_t *root = json_loads("{\"name\":\"j\",\"stages\":[{\"name\":\"a\","
				  "\"resources\":{\"gpu\":{\"count\":-1,"
				  "\"model\":\"a\"}}}]}",
				  0, &je);
	struct mer_job *job = NULL;
	char err[256] = "";

	T_ASSERT(root != NULL);
	T_EQ_INT(mer_job_from_json(root, NULL, &job, err, sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "stages[0].resources.gpu.count: must be a positive "
		      "integer");
	json_decref(root);
}

static void test_position_of_field(void)
{
	const char *text =
	    "{\n"
	    "  \"name\": \"j\",\n"
	    "  \"stages\": [\n"
	    "    {\"name\": \"a\", \"resources\": {\"cpu\": 1}},\n"
	    "    {\"name\": \"b\", \"resources\": {\"cpu\": 1}},\n"
	    "    {\"name\": \"c\", \"resources\": {\"gpu\": "
	    "{\"count\": 2.5, \"model\": \"x\"}}}\n"
	    "  ]\n"
	    "}\n";
	struct mer_job *job = NULL;
	char err[256] = "";

	T_EQ_INT(mer_job_parse("pipeline.json", text, strlen(text), &job, err,
			       sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "pipeline.json:6:50: stages[2].resources.gpu.count: "
		      "must be a positive integer");
}

static void test_load_examples(void)
{
	static const char *const files[] = {
	    "deploy/examples/jobs/llm-pipeline.json",
	    "deploy/examples/jobs/train-single.json",
	    "deploy/examples/jobs/inference-replicas.json",
	    "deploy/examples/jobs/best-effort-sweep.json",
	};
	const char *top = getenv("MERIDIAN_TOP");
	char path[1024], err[512];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		struct mer_job *job = NULL;
		snprintf(path, sizeof(path), "%s/%s", top ? top : ".",
			 files[i]);
		int rv = mer_job_load(path, &job, err, sizeof(err));
		if (rv)
			t_fail(__FILE__, __LINE__, "%s: %s", files[i], err);
		mer_job_free(job);
	}
}

static void test_impossible_request(void)
{
	const char *top = getenv("MERIDIAN_TOP");
	char path[1024], err[512] = "";
	struct mer_fed *fed = NULL;
	struct mer_job *job = NULL;
	const char *big = "{\"name\":\"j\",\"stages\":[{\"name\":\"a\","
			  "\"resources\":{\"cpu\":1}},{\"name\":\"t\","
			  "\"resources\":{\"gpu\":{\"count\":200,\"models\":"
			  "[\"a800\",\"a100\"]}}}]}";
	const char *nomodel = "{\"name\":\"j\",\"stages\":[{\"name\":\"t\","
			      "\"resources\":{\"gpu\":{\"count\":1,\"model\":"
			      "\"b200\"}}}]}";
	const char *gang = "{\"name\":\"j\",\"stages\":[{\"name\":\"t\","
			   "\"gang\":true,\"resources\":{\"gpu\":{\"count\":"
			   "12,\"model\":\"a100\"}}}]}";

	snprintf(path, sizeof(path),
		 "%s/tests/fixtures/placement/"
		 "fed-basic.json",
		 top ? top : ".");
	T_OK(mer_fed_load(path, &fed, err, sizeof(err)));
	T_OK(mer_job_parse("j", big, strlen(big), &job, err, sizeof(err)));
	T_EQ_INT(mer_place_check_job(job, fed, err, sizeof(err)), MER_EINVAL);
	/* By allocatable capacity, not health: iad-down's 128 A100s count. */
	T_CONTAINS(err, "stages[1].resources.gpu.count: 200 GPUs requested, "
			"the largest site has 128 of a100");
	mer_job_free(job);
	job = NULL;
	T_OK(mer_job_parse("j", nomodel, strlen(nomodel), &job, err,
			   sizeof(err)));
	T_EQ_INT(mer_place_check_job(job, fed, err, sizeof(err)), MER_EINVAL);
	T_CONTAINS(err, "stages[0].resources.gpu: no site has any of b200");
	mer_job_free(job);
	job = NULL;
	T_OK(mer_job_parse("j", gang, strlen(gang), &job, err, sizeof(err)));
	T_OK(mer_place_check_job(job, fed, err, sizeof(err)));
	mer_job_free(job);
	mer_fed_free(fed);
}

static const struct t_case cases[] = {
    {"good_job", test_good_job},
    {"bad_jobs", test_bad_jobs},
    {"errors_without_text", test_errors_without_text},
    {"position_of_field", test_position_of_field},
    {"load_examples", test_load_examples},
    {"impossible_request", test_impossible_request},
};

T_MAIN("job", cases)
