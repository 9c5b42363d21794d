/*
 * Site snapshots and federation files: what the engine sees of a site
 * (shared capacity, prices per kind, sorted sites, region links), and bad
 * snapshots rejected with the field named.
 */
#include "common/err.h"
#include "policy/fed.h"
#include "tests/harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fed_text =
    "{\"sites\":[\n"
    " {\"name\":\"zz\",\"region\":\"r2\",\"shared_fraction\":0.5,"
    "\"pools\":[{\"name\":\"p\",\"resources\":{\"cpu\":{\"total\":100,"
    "\"free\":90},\"gpu:a100\":{\"total\":16,\"allocatable\":15,"
    "\"free\":10,\"federation_used\":2}}}],"
    "\"prices\":{\"gpu_hour\":{\"a100\":2},\"core_hour\":0.1,"
    "\"memory_gb_hour\":1.024,\"egress_gb\":0.07},\"wan_gbps\":2,"
    "\"datasets\":[{\"name\":\"d\",\"bytes\":5}]},\n"
    " {\"name\":\"aa\",\"region\":\"r1\",\"pools\":[{\"name\":\"p\","
    "\"resources\":{\"cpu\":{\"total\":8,\"free\":8}}}],"
    "\"datasets\":[{\"name\":\"d\",\"bytes\":5}]}],\n"
    " \"links\":[{\"from\":\"r1\",\"to\":\"r2\",\"gbps\":4,"
    "\"egress_gb\":0.01}]}";

static void test_federation(void)
{
	struct mer_fed *fed = NULL;
	char err[256] = "";
	json_error_t je;
	json_t *root = json_loads(fed_text, 0, &je);

	T_ASSERT(root != NULL);
	T_OK(mer_fed_from_json(root, NULL, &fed, err, sizeof(err)));
	json_decref(root);
	T_EQ_INT(fed->nsites, 2);
	T_EQ_STR(fed->sites[0].name, "aa"); /* sorted by name */
	T_EQ_STR(fed->sites[1].region, "r2");
	T_EQ_INT(fed->nregions, 2);
	int k = mer_fed_kind_index(fed, "gpu:a100");
	T_ASSERT(k >= 2);
	const struct mer_res *r = &fed->sites[1].pools[0].res[k];
	/* floor(15 * 0.5) - 2 = 5 < free 10 */
	T_EXPECT(r->usable == 5);
	T_EXPECT(fed->sites[1].pools[0].res[MER_KIND_CPU].usable == 50);
	T_EXPECT(fed->sites[1].price_hour[k] == 2);
	T_EXPECT(fabs(fed->sites[1].price_hour[MER_KIND_MEM] - 0.001) < 1e-12);
	/* link given one way applies both ways */
	T_EXPECT(mer_fed_link(fed, 0, 1)->gbps == 4);
	T_EXPECT(mer_fed_link(fed, 1, 0)->gbps == 4);
	T_EXPECT(mer_fed_link(fed, 0, 0)->gbps == 100); /* intra default */
	/* 1 GB from zz (r2, 2 Gb/s WAN) to aa: capped by the WAN */
	T_EXPECT(fabs(mer_fed_transfer_s(fed, 1, 0, 1e9) - 4.0) < 1e-9);
	T_EXPECT(fabs(mer_fed_egress_usd(fed, 1, 0, 1e9) - 0.08) < 1e-9);
	T_EXPECT(mer_fed_egress_usd(fed, 1, 1, 1e9) == 0);
	int d = mer_fed_dataset_first(fed, "d");
	T_EQ_INT(d, 0);
	T_EQ_INT(fed->datasets[0].site, 0);
	T_EQ_INT(fed->datasets[1].site, 1);
	T_EQ_INT(mer_fed_dataset_first(fed, "nope"), -1);
	T_EQ_INT(mer_fed_site_index(fed, "zz"), 1);
	mer_fed_free(fed);
}

struct bad {
	const char *name;
	const char *site;
	const char *want;
};

#define POOL                                                                   \
	"\"pools\":[{\"name\":\"p\",\"resources\":{\"cpu\":{\"total\":8,"      \
	"\"free\":8}}}]"
static const struct bad bad_sites[] = {
    {"no name", "{\"region\":\"r\"," POOL "}", "site.json:1:1: name: required"},
    {"no pools", "{\"name\":\"s\",\"region\":\"r\"}", "pools: required"},
    {"empty pools", "{\"name\":\"s\",\"region\":\"r\",\"pools\":[]}",
     "pools: must have at least one pool"},
    {"unknown kind",
     "{\"name\":\"s\",\"region\":\"r\",\"pools\":[{\"name\":\"p\","
     "\"resources\":{\"tpu\":{\"total\":1,\"free\":1}}}]}",
     "pools[0].resources.tpu: unknown resource kind"},
    {"free over allocatable",
     "{\"name\":\"s\",\"region\":\"r\",\"pools\":[{\"name\":\"p\","
     "\"resources\":{\"cpu\":{\"total\":8,\"allocatable\":6,\"free\":7}}}]}",
     "pools[0].resources.cpu.free: must not exceed allocatable"},
    {"gpu without price",
     "{\"name\":\"s\",\"region\":\"r\",\"pools\":[{\"name\":\"p\","
     "\"resources\":{\"gpu:h800\":{\"total\":8,\"free\":8}}}],\"prices\":"
     "{\"gpu_hour\":{\"a100\":1}}}",
     "prices.gpu_hour.h800: needs a price: the site has gpu:h800"},
    {"bad health",
     "{\"name\":\"s\",\"region\":\"r\",\"health\":\"ok\"," POOL "}",
     "health: must be one of healthy, degraded, down"},
    {"bad fraction",
     "{\"name\":\"s\",\"region\":\"r\",\"shared_fraction\":1.5," POOL "}",
     "shared_fraction: must be a number from 0 to 1"},
    {"bad fabric",
     "{\"name\":\"s\",\"region\":\"r\",\"fabric\":[\"opa\"]," POOL "}",
     "fabric[0]: must be one of ib, roce, eth"},
    {"duplicate dataset",
     "{\"name\":\"s\",\"region\":\"r\"," POOL ",\"datasets\":[{\"name\":"
     "\"d\",\"bytes\":1},{\"name\":\"d\",\"bytes\":2}]}",
     "datasets[1].name: duplicate dataset \"d\""},
    {"unknown key", "{\"name\":\"s\",\"region\":\"r\",\"gpus\":3," POOL "}",
     "gpus: unknown key"},
    {"duplicate pool",
     "{\"name\":\"s\",\"region\":\"r\",\"pools\":[{\"name\":\"p\","
     "\"resources\":{}},{\"name\":\"p\",\"resources\":{}}]}",
     "pools[1].name: duplicate pool \"p\""},
};

static void test_bad_sites(void)
{
	for (size_t i = 0; i < sizeof(bad_sites) / sizeof(bad_sites[0]); i++) {
		const struct bad *b = &bad_sites[i];
		struct mer_json_doc doc = {0};
		char err[512] = "";
		int rv =
		    mer_json_doc_parse("site.json", b->site, strlen(b->site), 0,
				       0, &doc, err, sizeof(err));
		if (rv) {
			t_fail(__FILE__, __LINE__, "%s: %s", b->name, err);
			continue;
		}
		rv = mer_site_validate(doc.root, &doc, err, sizeof(err));
		if (rv == 0 || !strstr(err, b->want) ||
		    strncmp(err, "site.json:", 10) != 0)
			t_fail(__FILE__, __LINE__,
			       "%s: rv=%d err=\"%s\", want \"%s\"", b->name, rv,
			       err, b->want);
		mer_json_doc_free(&doc);
	}
}

static void test_duplicate_site(void)
{
	const char *text = "{\"sites\":[{\"name\":\"s\",\"region\":\"r\"," POOL
			   "},\n{\"name\":\"s\",\"region\":\"q\"," POOL "}]}";
	struct mer_json_doc doc = {0};
	struct mer_fed *fed = NULL;
	char err[256];

	T_OK(mer_json_doc_parse("fed.json", text, strlen(text), 0, 0, &doc, err,
				sizeof(err)));
	T_EQ_INT(mer_fed_from_json(doc.root, &doc, &fed, err, sizeof(err)),
		 MER_EINVAL);
	T_CONTAINS(err, "fed.json:2:9: sites[1].name: duplicate site \"s\"");
	mer_json_doc_free(&doc);
}

static void test_fixture_loads(void)
{
	const char *top = getenv("MERIDIAN_TOP");
	char path[1024], err[256];
	struct mer_fed *fed = NULL;

	snprintf(path, sizeof(path),
		 "%s/tests/fixtures/placement/fed-basic.json", top ? top : ".");
	T_OK(mer_fed_load(path, &fed, err, sizeof(err)));
	T_EQ_INT(fed->nsites, 8);
	mer_fed_free(fed);
}

static const struct t_case cases[] = {
    {"federation", test_federation},
    {"bad_sites", test_bad_sites},
    {"duplicate_site", test_duplicate_site},
    {"fixture_loads", test_fixture_loads},
};

T_MAIN("fed", cases)
