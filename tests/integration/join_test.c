/*
 * Integration tests for joining and revocation: a real etcd (tests/lib),
 * broker/membership.c behind a real link server on loopback tcp, and the
 * agent's join (site-agent/join.c). Logs of the whole program go to a file
 * that is searched for token secrets.
 */
#include "broker/membership.h"
#include "common/err.h"
#include "common/etcd.h"
#include "common/link.h"
#include "common/log.h"
#include "site-agent/join.h"
#include "tests/harness.h"
#include "tests/lib/etcd_server.h"
#include "tests/lib/proc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static struct t_etcd *etcd_srv;
static struct mer_etcd *etcd;
static char *logdir;
static char logpath[512];
static FILE *logf;
/* Every token secret this program made, to search the logs for. */
static char secrets[64][MER_TOKEN_SECRET_LEN + 1];
static int nsecrets;

static void global_cleanup(void)
{
	mer_log_set_output(NULL);
	if (logf)
		fclose(logf);
	mer_etcd_close(etcd);
	t_etcd_free(etcd_srv);
	t_rmtree(logdir);
	free(logdir);
}

static int global_setup(void)
{
	struct mer_etcd_opts eo = {0};

	if (etcd)
		return 0;
	if (t_tmpdir("join", &logdir) != 0)
		return -1;
	snprintf(logpath, sizeof(logpath), "%s/test.log", logdir);
	logf = fopen(logpath, "a");
	if (!logf)
		return -1;
	mer_log_set_output(logf);
	mer_log_set_level(MER_LOG_DEBUG);
	if (t_etcd_start(&etcd_srv) != 0)
		return -1;
	/* After t_etcd_start: handlers run in reverse order, and ours must
	 * run before tests/lib/proc's, which frees the etcd process. */
	atexit(global_cleanup);
	eo.endpoints = t_etcd_url(etcd_srv);
	return mer_etcd_open(&eo, &etcd);
}

static void remember(const char *token)
{
	if (nsecrets < 64)
		snprintf(secrets[nsecrets++], sizeof(secrets[0]), "%s",
			 token + MER_TOKEN_ID_LEN + 1);
}

/* ---- broker side: membership behind a link server ---- */

struct fx {
	struct mer_membership *m;
	struct mer_keypair bkey;
	char fp[MER_KEY_FP_SIZE];
	struct mer_link_server *srv;
	char prefix[64];
	char *dir;
	pthread_mutex_t mu;
	int reports;
	char last_site[MER_LINK_NAME_MAX];
};

static struct fx F;

static int hk_check(void *arg, const uint8_t pk[32], char site[128])
{
	return mer_membership_check_key(((struct fx *)arg)->m, pk, site);
}

static int hk_join(void *arg, const char *token, const uint8_t pk[32],
		   char site[128], char region[128])
{
	return mer_membership_join(((struct fx *)arg)->m, token, pk, site,
				   region);
}

static int hk_report(void *arg, const char *site, json_t *report)
{
	struct fx *f = arg;

	(void)report;
	pthread_mutex_lock(&f->mu);
	f->reports++;
	snprintf(f->last_site, sizeof(f->last_site), "%s", site);
	pthread_mutex_unlock(&f->mu);
	return 0;
}

static int fx_start(const char *tag)
{
	static const struct mer_link_server_ops ops = {
	    .check_key = hk_check,
	    .join = hk_join,
	    .report = hk_report,
	    .arg = &F,
	};
	struct mer_link_server_opts so = {.url = "tcp://127.0.0.1:0",
					  .receivers = 4};

	memset(&F, 0, sizeof(F));
	pthread_mutex_init(&F.mu, NULL);
	if (global_setup() != 0)
		return -1;
	snprintf(F.prefix, sizeof(F.prefix), "/t-%s", tag);
	if (mer_membership_open(etcd, F.prefix, &F.m) != 0 ||
	    mer_keypair_generate(&F.bkey) != 0 ||
	    t_tmpdir("joinfx", &F.dir) != 0)
		return -1;
	mer_key_fingerprint(F.bkey.pk, F.fp);
	so.key = &F.bkey;
	return mer_link_server_start(&so, &ops, &F.srv);
}

static void fx_stop(void)
{
	mer_link_server_stop(F.srv);
	mer_membership_close(F.m);
	t_rmtree(F.dir);
	free(F.dir);
	pthread_mutex_destroy(&F.mu);
	memset(&F, 0, sizeof(F));
}

static int new_token(const char *site, int64_t ttl, char tok[MER_TOKEN_SIZE])
{
	int rv =
	    mer_membership_token_create(F.m, site, "cn-east-1", ttl, tok, NULL);
	if (rv == 0)
		remember(tok);
	return rv;
}

static int agent_join(const char *token, const char *keyname,
		      struct mer_agent_join_result *r, char *err, size_t n)
{
	char path[600];
	struct mer_agent_join_opts o = {
	    .broker_url = mer_link_server_url(F.srv),
	    .token = token,
	    .broker_fp = F.fp,
	    .key_path = path,
	    .timeout_ms = 5000,
	};

	snprintf(path, sizeof(path), "%s/%s", F.dir, keyname);
	return mer_agent_join(&o, r, err, n);
}

static int client_for(const char *keyname, struct mer_link_client **c)
{
	char path[600];
	struct mer_keypair kp;
	int rv;

	snprintf(path, sizeof(path), "%s/%s", F.dir, keyname);
	if (mer_keypair_load(path, &kp, NULL, 0) != 0)
		return -1;
	struct mer_link_client_opts o = {.url = mer_link_server_url(F.srv),
					 .key = &kp,
					 .broker_fp = F.fp,
					 .request_timeout_ms = 3000};
	rv = mer_link_client_open(&o, c);
	mer_keypair_wipe(&kp);
	return rv;
}

static int send_report(struct mer_link_client *c)
{
	json_t *r = json_pack("{s:s}", "kind", "summary");
	int rv = mer_link_client_report(c, r, 0);

	json_decref(r);
	return rv;
}

/* ---- cases ---- */

static void test_join_success(void)
{
	char tok[MER_TOKEN_SIZE], err[256], path[600];
	struct mer_agent_join_result r;
	struct mer_token_info ti;
	struct mer_site_record rec;
	struct mer_link_client *c = NULL;
	struct stat st;

	T_ASSERT(fx_start("ok") == 0);
	T_OK(new_token("east-1", 3600, tok));
	T_OK(agent_join(tok, "site.key", &r, err, sizeof(err)));
	T_EQ_STR(r.site, "east-1");
	T_EQ_STR(r.region, "cn-east-1");
	T_EQ_INT(r.key_created, 1);
	snprintf(path, sizeof(path), "%s/site.key", F.dir);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0600);
	/* etcd has the site with the agent's key, and the token is used. */
	T_OK(mer_membership_site_get(F.m, "east-1", &rec));
	T_EQ_STR(rec.fingerprint, r.fingerprint);
	T_EQ_STR(rec.region, "cn-east-1");
	T_EQ_INT(rec.revoked, 0);
	T_EXPECT(rec.joined_at > 0);
	char id[MER_TOKEN_ID_LEN + 1];
	snprintf(id, sizeof(id), "%.*s", MER_TOKEN_ID_LEN, tok);
	T_OK(mer_membership_token_get(F.m, id, &ti));
	T_EQ_INT(ti.used, 1);
	T_EQ_STR(ti.used_by, r.fingerprint);
	/* The joined key now opens sessions and its reports arrive. */
	T_ASSERT(client_for("site.key", &c) == 0);
	T_OK(send_report(c));
	mer_link_client_close(c);
	T_EQ_INT(F.reports, 1);
	T_EQ_STR(F.last_site, "east-1");
	struct mer_link_stats s;
	mer_link_server_get_stats(F.srv, &s);
	T_EQ_INT(s.joins, 1);
	fx_stop();
}

static void test_join_expired(void)
{
	char tok[MER_TOKEN_SIZE], err[256];
	struct mer_agent_join_result r;

	T_ASSERT(fx_start("exp") == 0);
	T_OK(new_token("east-2", 1, tok));
	t_sleep_ms(2100);
	T_EQ_INT(agent_join(tok, "site.key", &r, err, sizeof(err)),
		 MER_EEXPIRED);
	T_CONTAINS(err, "expired");
	T_EXPECT(strchr(err, '\n') == NULL);
	T_EQ_INT(mer_membership_site_get(F.m, "east-2",
					 &(struct mer_site_record){0}),
		 MER_ENOTFOUND);
	fx_stop();
}

static void test_join_reused(void)
{
	char tok[MER_TOKEN_SIZE], err[256];
	struct mer_agent_join_result r;

	T_ASSERT(fx_start("reuse") == 0);
	T_OK(new_token("east-3", 3600, tok));
	T_OK(agent_join(tok, "a.key", &r, err, sizeof(err)));
	T_EQ_INT(agent_join(tok, "b.key", &r, err, sizeof(err)), MER_EUSED);
	T_CONTAINS(err, "used");
	fx_stop();
}

static void test_join_unknown_malformed(void)
{
	char tok[MER_TOKEN_SIZE], fake[MER_TOKEN_SIZE], err[256];
	struct mer_agent_join_result r;
	uint8_t pk[32] = {1};
	char site[128], region[128];

	T_ASSERT(fx_start("unk") == 0);
	T_OK(new_token("east-4", 3600, tok));
	/* Right id, wrong secret: looks unknown. */
	snprintf(fake, sizeof(fake), "%s", tok);
	fake[MER_TOKEN_LEN - 1] = fake[MER_TOKEN_LEN - 1] == 'a' ? 'b' : 'a';
	T_EQ_INT(agent_join(fake, "a.key", &r, err, sizeof(err)),
		 MER_ENOTFOUND);
	T_CONTAINS(err, "unknown");
	T_OK(mer_token_generate(fake));
	T_EQ_INT(agent_join(fake, "a.key", &r, err, sizeof(err)),
		 MER_ENOTFOUND);
	T_EQ_INT(agent_join("not-a-token", "a.key", &r, err, sizeof(err)),
		 MER_EPARSE);
	T_CONTAINS(err, "malformed");
	/* The broker side refuses malformed tokens with its own code too. */
	T_EQ_INT(mer_membership_join(F.m, "abc.def", pk, site, region),
		 MER_EPARSE);
	/* The real token still works after all that. */
	T_OK(agent_join(tok, "a.key", &r, err, sizeof(err)));
	fx_stop();
}

struct racer {
	const char *token;
	int rv;
};

static void *race_thread(void *arg)
{
	struct racer *r = arg;
	struct mer_keypair kp;
	char site[128], region[128];

	if (mer_keypair_generate(&kp) != 0) {
		r->rv = -1;
		return NULL;
	}
	struct mer_link_client_opts o = {.url = mer_link_server_url(F.srv),
					 .key = &kp,
					 .broker_fp = F.fp,
					 .request_timeout_ms = 10000};
	r->rv = mer_link_join(&o, r->token, site, region);
	mer_keypair_wipe(&kp);
	return NULL;
}

static void test_join_race(void)
{
	enum { N = 8 };
	char tok[MER_TOKEN_SIZE];
	struct racer rc[N];
	pthread_t th[N];
	int wins = 0, used = 0;

	T_ASSERT(fx_start("race") == 0);
	T_OK(new_token("east-5", 3600, tok));
	for (int i = 0; i < N; i++) {
		rc[i].token = tok;
		rc[i].rv = -1;
		T_ASSERT(pthread_create(&th[i], NULL, race_thread, &rc[i]) ==
			 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		if (rc[i].rv == 0)
			wins++;
		else if (rc[i].rv == MER_EUSED)
			used++;
		else
			t_fail(__FILE__, __LINE__, "racer %d: %s", i,
			       mer_errname(rc[i].rv));
	}
	T_EQ_INT(wins, 1);
	T_EQ_INT(used, N - 1);
	fx_stop();
}

static void test_revoke_and_rejoin(void)
{
	char tok[MER_TOKEN_SIZE], tok2[MER_TOKEN_SIZE], err[256];
	struct mer_agent_join_result r;
	struct mer_link_client *c = NULL, *c2 = NULL;
	struct mer_link_stats s;

	T_ASSERT(fx_start("revoke") == 0);
	T_OK(new_token("east-6", 3600, tok));
	T_OK(agent_join(tok, "old.key", &r, err, sizeof(err)));
	T_ASSERT(client_for("old.key", &c) == 0);
	T_OK(send_report(c));
	/* A second token for a site that is live: refused. */
	T_OK(new_token("east-6", 3600, tok2));
	T_EQ_INT(agent_join(tok2, "new.key", &r, err, sizeof(err)), MER_EEXIST);
	/* Revoke: etcd first, then live sessions. */
	T_OK(mer_membership_revoke(F.m, "east-6"));
	T_OK(mer_link_server_revoke(F.srv, "east-6"));
	T_EQ_INT(send_report(c), MER_EREVOKED);
	mer_link_client_close(c);
	c = NULL;
	/* Re-join needs a new token (tok2 was not consumed by the refusal)
	 * and brings a new key. */
	T_EQ_INT(agent_join(tok, "new.key", &r, err, sizeof(err)), MER_EUSED);
	T_OK(agent_join(tok2, "new.key", &r, err, sizeof(err)));
	T_ASSERT(client_for("new.key", &c2) == 0);
	T_OK(send_report(c2));
	mer_link_client_close(c2);
	/* The old key stays refused. */
	T_ASSERT(client_for("old.key", &c) == 0);
	T_EQ_INT(send_report(c), MER_EREVOKED);
	mer_link_client_close(c);
	mer_link_server_get_stats(F.srv, &s);
	T_EXPECT(s.rejected[MER_CHAN_R_REVOKED] >= 2);
	fx_stop();
}

static void test_key_file_mode_refused(void)
{
	char tok[MER_TOKEN_SIZE], err[512], path[600];
	struct mer_agent_join_result r;
	struct mer_keypair kp;
	struct stat st;

	T_ASSERT(fx_start("mode") == 0);
	T_OK(new_token("east-7", 3600, tok));
	/* The key join writes is 0600; a loosened one is refused by the
	 * agent when it loads it. */
	T_OK(agent_join(tok, "site.key", &r, err, sizeof(err)));
	snprintf(path, sizeof(path), "%s/site.key", F.dir);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0600);
	T_ASSERT(chmod(path, 0644) == 0);
	T_EQ_INT(mer_keypair_load(path, &kp, err, sizeof(err)), MER_EPERM);
	T_CONTAINS(err, path);
	T_CONTAINS(err, "0644");
	fx_stop();
}

/* Review finding 6: a join never reuses a key. An existing key file is
 * left alone unless rotation is asked for; with it, the old (revoked) key
 * is replaced by a new one only after the broker accepted it. A key that
 * joined before gets its own error, and the token stays unused. */
static void test_rejoin_makes_new_key(void)
{
	char tok[MER_TOKEN_SIZE], tok2[MER_TOKEN_SIZE], err[512], path[600];
	char site[128], region[128];
	struct mer_agent_join_result r;
	struct mer_keypair old, now;
	struct mer_token_info ti;
	struct mer_link_client *c = NULL;

	T_ASSERT(fx_start("rekey") == 0);
	T_OK(new_token("east-9", 3600, tok));
	T_OK(agent_join(tok, "site.key", &r, err, sizeof(err)));
	T_EQ_INT(r.key_created, 1);
	snprintf(path, sizeof(path), "%s/site.key", F.dir);
	T_OK(mer_keypair_load(path, &old, NULL, 0));
	T_OK(mer_membership_revoke(F.m, "east-9"));
	T_OK(mer_link_server_revoke(F.srv, "east-9"));
	T_OK(new_token("east-9", 3600, tok2));
	/* Without rotate the existing key file is not touched. */
	T_EQ_INT(agent_join(tok2, "site.key", &r, err, sizeof(err)),
		 MER_EEXIST);
	T_CONTAINS(err, path);
	/* The old key itself, offered straight to the broker: its own
	 * error, and the token is not spent. */
	T_EQ_INT(mer_membership_join(F.m, tok2, old.pk, site, region),
		 MER_ESTATE);
	snprintf(site, sizeof(site), "%.*s", MER_TOKEN_ID_LEN, tok2);
	T_OK(mer_membership_token_get(F.m, site, &ti));
	T_EQ_INT(ti.used, 0);
	/* With rotate: a new key, installed over the old one. */
	{
		struct mer_agent_join_opts o = {
		    .broker_url = mer_link_server_url(F.srv),
		    .token = tok2,
		    .broker_fp = F.fp,
		    .key_path = path,
		    .rotate = 1,
		    .timeout_ms = 5000,
		};
		T_OK(mer_agent_join(&o, &r, err, sizeof(err)));
	}
	T_OK(mer_keypair_load(path, &now, NULL, 0));
	T_EXPECT(memcmp(old.pk, now.pk, 32) != 0);
	char leftover[700];
	snprintf(leftover, sizeof(leftover), "%s.new", path);
	T_EXPECT(access(leftover, F_OK) != 0); /* no leftover */
	T_ASSERT(client_for("site.key", &c) == 0);
	T_OK(send_report(c));
	mer_link_client_close(c);
	mer_keypair_wipe(&old);
	mer_keypair_wipe(&now);
	fx_stop();
}

/* Review finding 14: the claim itself raced by many threads released at
 * once by a barrier: exactly one wins. */
struct claimer {
	pthread_barrier_t *bar;
	const char *token;
	int rv;
};

static void *claim_thread(void *arg)
{
	struct claimer *cl = arg;
	struct mer_keypair kp;
	char site[128], region[128];

	if (mer_keypair_generate(&kp) != 0) {
		cl->rv = -1;
		return NULL;
	}
	pthread_barrier_wait(cl->bar);
	cl->rv = mer_membership_join(F.m, cl->token, kp.pk, site, region);
	mer_keypair_wipe(&kp);
	return NULL;
}

static void test_membership_claim_race(void)
{
	enum { N = 16 };
	char tok[MER_TOKEN_SIZE];
	struct claimer cl[N];
	pthread_t th[N];
	pthread_barrier_t bar;
	int wins = 0, used = 0;

	T_ASSERT(fx_start("claimrace") == 0);
	T_OK(new_token("east-10", 3600, tok));
	T_ASSERT(pthread_barrier_init(&bar, NULL, N) == 0);
	for (int i = 0; i < N; i++) {
		cl[i] = (struct claimer){.bar = &bar, .token = tok, .rv = -1};
		T_ASSERT(pthread_create(&th[i], NULL, claim_thread, &cl[i]) ==
			 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		if (cl[i].rv == 0)
			wins++;
		else if (cl[i].rv == MER_EUSED)
			used++;
		else
			t_fail(__FILE__, __LINE__, "claimer %d: %s", i,
			       mer_errname(cl[i].rv));
	}
	pthread_barrier_destroy(&bar);
	T_EQ_INT(wins, 1);
	T_EQ_INT(used, N - 1);
	fx_stop();
}

static void test_secret_never_logged(void)
{
	char tok[MER_TOKEN_SIZE], err[256];
	struct mer_agent_join_result r;
	struct mer_etcd_range rg = {0};
	char *text = NULL;

	T_ASSERT(fx_start("logs") == 0);
	/* One more full flow at debug level, failures included. */
	T_OK(new_token("east-8", 3600, tok));
	T_OK(agent_join(tok, "k.key", &r, err, sizeof(err)));
	T_EQ_INT(agent_join(tok, "k2.key", &r, err, sizeof(err)), MER_EUSED);
	T_EXPECT(strstr(err, tok + MER_TOKEN_ID_LEN + 1) == NULL);
	fflush(logf);
	T_ASSERT(t_read_file(logpath, &text, NULL) == 0);
	T_CONTAINS(text, "join token created");
	T_CONTAINS(text, "site joined");
	T_EXPECT(nsecrets >= 1);
	for (int i = 0; i < nsecrets; i++)
		if (strstr(text, secrets[i]))
			t_fail(__FILE__, __LINE__, "secret %d in the logs", i);
	free(text);
	/* Nor in etcd (only the hash is stored), nor in etcd's log. */
	T_OK(mer_etcd_range_prefix(etcd, "/", 1, NULL, 0, 0, 0, 0, &rg, NULL));
	T_EXPECT(rg.n > 0);
	for (size_t k = 0; k < rg.n; k++)
		for (int i = 0; i < nsecrets; i++)
			if (memmem(rg.kvs[k].value, rg.kvs[k].value_len,
				   secrets[i], MER_TOKEN_SECRET_LEN))
				t_fail(__FILE__, __LINE__,
				       "secret %d stored in etcd", i);
	mer_etcd_range_clear(&rg);
	if (t_read_file(t_etcd_log(etcd_srv), &text, NULL) == 0) {
		for (int i = 0; i < nsecrets; i++)
			if (strstr(text, secrets[i]))
				t_fail(__FILE__, __LINE__,
				       "secret %d in etcd's log", i);
		free(text);
	}
	fx_stop();
}

static const struct t_case cases[] = {
    {"join_success", test_join_success},
    {"join_expired", test_join_expired},
    {"join_reused", test_join_reused},
    {"join_unknown_malformed", test_join_unknown_malformed},
    {"join_race", test_join_race},
    {"revoke_and_rejoin", test_revoke_and_rejoin},
    {"key_file_mode_refused", test_key_file_mode_refused},
    {"rejoin_makes_new_key", test_rejoin_makes_new_key},
    {"membership_claim_race", test_membership_claim_race},
    {"secret_never_logged", test_secret_never_logged},
};

T_MAIN("join", cases)
