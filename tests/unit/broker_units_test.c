/*
 * Unit tests for the broker's pure parts: the config table, the tenants
 * file (errors with positions, constant-time lookup by token hash), job
 * ids and the metrics text.
 */
#include "broker/metrics.h"
#include "broker/settings.h"
#include "broker/store.h"
#include "broker/tenants.h"
#include "common/err.h"
#include "tests/harness.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

static void test_config_table(void)
{
	char err[512] = "";
	struct mer_broker_cfg c = {0};
	const char *text =
	    "{\"etcd\": {\"endpoints\": [\"http://127.0.0.1:1\"]},"
	    " \"tenants_file\": \"/dev/null\"}";

	T_OK(mer_cfg_table_check(&mer_broker_cfg_table, err, sizeof(err)));
	T_OK(mer_cfg_load_string(&mer_broker_cfg_table, "b.json", text,
				 strlen(text), &c, err, sizeof(err)));
	T_EQ_STR(c.etcd_prefix, "/meridian");
	T_EQ_INT(c.batch_max, 128);
	T_EQ_INT(c.http_max_body, 1 << 20);
	mer_broker_cfg_free(&c);
	text = "{\"etcd\": {\"endpoints\": [\"x\"], \"prefix\": \"m/\"},"
	       " \"tenants_file\": \"/dev/null\"}";
	T_EXPECT(mer_cfg_load_string(&mer_broker_cfg_table, "b.json", text,
				     strlen(text), &c, err,
				     sizeof(err)) == MER_EINVAL);
	T_CONTAINS(err, "b.json:1:");
	T_CONTAINS(err, "etcd.prefix");
	text = "{\"etcd\": {\"endpoints\": [\"x\"]}, \"tenants_file\": "
	       "\"/dev/null\", \"listen\": {\"http\": \"https://0:1\"}}";
	T_EXPECT(mer_cfg_load_string(&mer_broker_cfg_table, "b.json", text,
				     strlen(text), &c, err, sizeof(err)) != 0);
	T_CONTAINS(err, "tls.cert_file");
}

static void test_tenants(void)
{
	char a[MER_API_HASH_HEX], b[MER_API_HASH_HEX], text[1024], err[512];
	struct mer_tenants *t = NULL;
	struct mer_principal who;

	mer_api_token_hash_hex("token-for-ops-0001", a);
	mer_api_token_hash_hex("token-for-acme-001", b);
	T_EQ_INT(strlen(a), 64);
	T_EXPECT(strcmp(a, b) != 0);
	snprintf(text, sizeof(text),
		 "{\"tenants\": [{\"name\": \"ops\", \"role\": \"admin\", "
		 "\"token_hashes\": [\"%s\"]},\n {\"name\": \"acme\", "
		 "\"role\": \"tenant\", \"token_hashes\": [\"%s\"]}]}",
		 a, b);
	T_OK(mer_tenants_parse("t.json", text, strlen(text), &t, err,
			       sizeof(err)));
	T_EQ_INT(mer_tenants_count(t), 2);
	T_OK(mer_tenants_auth(t, "token-for-acme-001", &who));
	T_EQ_STR(who.tenant, "acme");
	T_EQ_INT(who.role, MER_ROLE_TENANT);
	T_OK(mer_tenants_auth(t, "token-for-ops-0001", &who));
	T_EQ_INT(who.role, MER_ROLE_ADMIN);
	T_EQ_INT(mer_tenants_auth(t, "token-for-acme-002", &who), MER_EAUTH);
	T_EQ_INT(mer_tenants_auth(t, "", &who), MER_EAUTH);
	mer_tenants_free(t);

	/* Errors point at the value. */
	snprintf(text, sizeof(text),
		 "{\"tenants\": [{\"name\": \"ops\", \"role\": \"root\", "
		 "\"token_hashes\": [\"%s\"]}]}",
		 a);
	T_EQ_INT(mer_tenants_parse("t.json", text, strlen(text), &t, err,
				   sizeof(err)),
		 MER_EINVAL);
	T_CONTAINS(err, "t.json:1:");
	T_CONTAINS(err, "tenants[0].role");
	snprintf(text, sizeof(text),
		 "{\"tenants\": [{\"name\": \"ops\", \"role\": \"admin\", "
		 "\"token_hashes\": [\"%s\", \"%s\"]}]}",
		 a, a);
	T_EQ_INT(mer_tenants_parse("t.json", text, strlen(text), &t, err,
				   sizeof(err)),
		 MER_EINVAL);
	T_CONTAINS(err, "twice");
	const char *bad = "{\"tenants\": [{\"name\": \"Ops!\", \"role\": "
			  "\"admin\", \"token_hashes\": [\"00\"]}]}";
	T_EQ_INT(
	    mer_tenants_parse("t.json", bad, strlen(bad), &t, err, sizeof(err)),
	    MER_EINVAL);
	T_CONTAINS(err, "tenants[0].name");
	bad = "{\"tenants\": [], \"extra\": 1}";
	T_EQ_INT(
	    mer_tenants_parse("t.json", bad, strlen(bad), &t, err, sizeof(err)),
	    MER_EINVAL);
	T_CONTAINS(err, "extra");
}

static void test_job_ids(void)
{
	char a[MER_JOB_ID_SIZE], b[MER_JOB_ID_SIZE];

	mer_store_new_id(a);
	mer_store_new_id(b);
	T_EQ_INT(strlen(a), MER_JOB_ID_LEN);
	T_EXPECT(mer_job_id_valid(a));
	T_EXPECT(strcmp(a, b) != 0);
	T_EXPECT(!mer_job_id_valid("j123"));
	T_EXPECT(!mer_job_id_valid("../../etc/passwd000"));
	T_EXPECT(!mer_job_id_valid("J0000000000000000000"));
}

static void test_metrics_text(void)
{
	struct mer_metrics *m;
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	T_OK(mer_metrics_new(&m));
	mer_metrics_http_observe(m, "POST", "/v1/jobs", 201, 0.003);
	mer_metrics_http_observe(m, "POST", "/v1/jobs", 201, 0.2);
	mer_metrics_observe(m, MER_H_PLACEMENT, 0.01);
	mer_metrics_inc(m, MER_C_JOBS_SUBMITTED, 2);
	f = open_memstream(&buf, &len);
	mer_metrics_render(m, f);
	fclose(f);
	T_CONTAINS(buf, "meridian_http_requests_total{route=\"/v1/jobs\","
			"method=\"POST\",code=\"201\"} 2\n");
	T_CONTAINS(buf, "meridian_http_request_duration_seconds_bucket{le="
			"\"0.005\"} 1\n");
	T_CONTAINS(buf, "meridian_http_request_duration_seconds_bucket{le="
			"\"+Inf\"} 2\n");
	T_CONTAINS(buf, "meridian_jobs_submitted_total 2\n");
	T_CONTAINS(buf, "# TYPE meridian_placement_duration_seconds "
			"histogram\n");
	free(buf);
	mer_metrics_free(m);
}

static const struct t_case cases[] = {
    {"config_table", test_config_table},
    {"tenants", test_tenants},
    {"job_ids", test_job_ids},
    {"metrics_text", test_metrics_text},
};

T_MAIN("broker_units", cases)
