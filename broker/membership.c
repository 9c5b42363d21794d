/*
 * Join tokens, site records and revocation in etcd for the broker. Not the
 * link (common/link.c calls in through its hooks) and not the REST or CLI
 * commands that expose these operations.
 */
#include "membership.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"

#define KEY_MAX 512
#define MAX_TTL_S (30 * 24 * 3600)
#define CLAIM_TRIES 3

struct mer_membership {
	struct mer_etcd *etcd;
	char prefix[128];
};

int mer_membership_open(struct mer_etcd *etcd, const char *prefix,
			struct mer_membership **out)
{
	struct mer_membership *m;

	*out = NULL;
	if (!etcd || (prefix && strlen(prefix) >= sizeof(m->prefix) - 1))
		return MER_EINVAL;
	if (sodium_init() < 0)
		return MER_ECRYPTO;
	m = calloc(1, sizeof(*m));
	if (!m)
		return MER_ENOMEM;
	m->etcd = etcd;
	snprintf(m->prefix, sizeof(m->prefix), "%s",
		 prefix ? prefix : "/meridian");
	*out = m;
	return 0;
}

void mer_membership_close(struct mer_membership *m)
{
	free(m);
}

static int valid_name(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      (c == '-' && i > 0)))
			return 0;
	}
	return 1;
}

static void key_of(const struct mer_membership *m, char out[KEY_MAX],
		   const char *kind, const char *name)
{
	snprintf(out, KEY_MAX, "%s/%s/%s", m->prefix, kind, name);
}

static void key_hex(const uint8_t pk[MER_KEY_BYTES], char hex[65])
{
	uint8_t h[32];

	crypto_hash_sha256(h, pk, MER_KEY_BYTES);
	sodium_bin2hex(hex, 65, h, sizeof(h));
}

static int64_t wall_now(void)
{
	return (int64_t)time(NULL);
}

static void copy_str(char *dst, size_t n, json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));

	snprintf(dst, n, "%s", v ? v : "");
}

static json_t *load_kv(const struct mer_etcd_kv *kv)
{
	json_error_t e;
	json_t *o = json_loadb(kv->value, kv->value_len, 0, &e);

	if (o && !json_is_object(o)) {
		json_decref(o);
		o = NULL;
	}
	return o;
}

static void token_info_from(json_t *o, struct mer_token_info *info)
{
	memset(info, 0, sizeof(*info));
	copy_str(info->id, sizeof(info->id), o, "id");
	copy_str(info->site, sizeof(info->site), o, "site");
	copy_str(info->region, sizeof(info->region), o, "region");
	copy_str(info->used_by, sizeof(info->used_by), o, "used_by");
	info->created_at = json_integer_value(json_object_get(o, "created_at"));
	info->expires_at = json_integer_value(json_object_get(o, "expires_at"));
	info->used = json_is_true(json_object_get(o, "used"));
}

int mer_membership_token_create(struct mer_membership *m, const char *site,
				const char *region, int64_t ttl_s,
				char token[MER_TOKEN_SIZE],
				struct mer_token_info *info)
{
	char key[KEY_MAX], hash[MER_TOKEN_HASH_B64_SIZE];
	struct mer_token t;
	int64_t now = wall_now();
	int rv = MER_EEXIST;

	if (!valid_name(site) || !valid_name(region) || ttl_s <= 0 ||
	    ttl_s > MAX_TTL_S)
		return MER_EINVAL;
	/* Ids are 40 random bits: a collision is rare, but create (not put)
	 * so one can never overwrite another token. */
	for (int tries = 0; tries < 5 && rv == MER_EEXIST; tries++) {
		json_t *o;
		char *text;

		rv = mer_token_generate(token);
		if (rv != 0)
			return rv;
		rv = mer_token_parse(token, &t);
		if (rv != 0)
			break;
		mer_token_hash_b64(&t, hash);
		o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:b}", "id", t.id,
			      "hash", hash, "site", site, "region", region,
			      "created_at", (json_int_t)now, "expires_at",
			      (json_int_t)(now + ttl_s), "used", 0);
		text = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
		key_of(m, key, "tokens", t.id);
		rv = text ? mer_etcd_create(m->etcd, key, strlen(key), text,
					    strlen(text), 0, NULL)
			  : MER_ENOMEM;
		if (rv == 0 && info)
			token_info_from(o, info);
		free(text);
		json_decref(o);
	}
	if (rv == 0)
		mer_info("join token created",
			 "token_id=%s site=%s region=%s ttl_s=%lld", t.id, site,
			 region, (long long)ttl_s);
	else
		sodium_memzero(token, MER_TOKEN_SIZE);
	mer_token_wipe(&t);
	return rv;
}

int mer_membership_token_get(struct mer_membership *m, const char *id,
			     struct mer_token_info *info)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv;
	json_t *o;
	int rv;

	if (!mer_token_id_valid(id))
		return MER_EINVAL;
	key_of(m, key, "tokens", id);
	rv = mer_etcd_get(m->etcd, key, strlen(key), &kv, NULL);
	if (rv != 0)
		return rv;
	o = load_kv(&kv);
	mer_etcd_kv_clear(&kv);
	if (!o)
		return MER_EPARSE;
	token_info_from(o, info);
	json_decref(o);
	return 0;
}

static int site_record_from(json_t *o, struct mer_site_record *rec)
{
	memset(rec, 0, sizeof(*rec));
	copy_str(rec->name, sizeof(rec->name), o, "name");
	copy_str(rec->region, sizeof(rec->region), o, "region");
	copy_str(rec->public_key, sizeof(rec->public_key), o, "public_key");
	copy_str(rec->fingerprint, sizeof(rec->fingerprint), o, "fingerprint");
	rec->joined_at = json_integer_value(json_object_get(o, "joined_at"));
	rec->revoked = json_is_true(json_object_get(o, "revoked"));
	rec->revoked_at = json_integer_value(json_object_get(o, "revoked_at"));
	return 0;
}

/* Reads a site: *o (new ref) and its mod_revision (0 and NULL if absent). */
static int site_read(struct mer_membership *m, const char *name, json_t **o,
		     int64_t *mod_rev)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv;
	int rv;

	*o = NULL;
	*mod_rev = 0;
	key_of(m, key, "sites", name);
	rv = mer_etcd_get(m->etcd, key, strlen(key), &kv, NULL);
	if (rv != 0)
		return rv;
	*o = load_kv(&kv);
	*mod_rev = kv.mod_revision;
	mer_etcd_kv_clear(&kv);
	return *o ? 0 : MER_EPARSE;
}

int mer_membership_site_get(struct mer_membership *m, const char *name,
			    struct mer_site_record *rec)
{
	json_t *o;
	int64_t rev;
	int rv;

	if (!valid_name(name))
		return MER_EINVAL;
	rv = site_read(m, name, &o, &rev);
	if (rv != 0)
		return rv;
	site_record_from(o, rec);
	json_decref(o);
	return 0;
}

/* One attempt at the claim txn; MER_ECOMPARE when someone else moved the
 * token or the site meanwhile. */
static int claim_once(struct mer_membership *m, const struct mer_token *t,
		      const uint8_t pk[MER_KEY_BYTES],
		      char site[MER_LINK_NAME_MAX],
		      char region[MER_LINK_NAME_MAX])
{
	char tkey[KEY_MAX], skey[KEY_MAX], ikey[KEY_MAX], hex[65];
	char fp[MER_KEY_FP_SIZE], pk64[MER_KEY_B64_SIZE];
	struct mer_etcd_kv kv;
	struct mer_etcd_txn_result res;
	json_t *tok = NULL, *old = NULL, *rec = NULL;
	char *ttext = NULL, *stext = NULL;
	int64_t now = wall_now(), site_rev = 0;
	int rv;

	memset(&res, 0, sizeof(res));
	key_of(m, tkey, "tokens", t->id);
	rv = mer_etcd_get(m->etcd, tkey, strlen(tkey), &kv, NULL);
	if (rv != 0)
		return rv;
	tok = load_kv(&kv);
	int64_t tok_rev = kv.mod_revision;
	mer_etcd_kv_clear(&kv);
	if (!tok) {
		rv = MER_ENOTFOUND;
		goto out;
	}
	/* A wrong secret looks like an unknown token: say nothing more. */
	if (mer_token_verify(
		t, json_string_value(json_object_get(tok, "hash"))) != 0) {
		rv = MER_ENOTFOUND;
		goto out;
	}
	if (json_is_true(json_object_get(tok, "used"))) {
		rv = MER_EUSED;
		goto out;
	}
	if (json_integer_value(json_object_get(tok, "expires_at")) <= now) {
		rv = MER_EEXPIRED;
		goto out;
	}
	copy_str(site, MER_LINK_NAME_MAX, tok, "site");
	copy_str(region, MER_LINK_NAME_MAX, tok, "region");
	/* Keys are single-use too: a key that joined once (revoked since, or
	 * another site's) can never join again. Say so, and leave the token
	 * unused. */
	key_hex(pk, hex);
	key_of(m, ikey, "site-keys", hex);
	rv = mer_etcd_get(m->etcd, ikey, strlen(ikey), &kv, NULL);
	if (rv == 0) {
		mer_etcd_kv_clear(&kv);
		rv = MER_ESTATE;
		goto out;
	}
	if (rv != MER_ENOTFOUND)
		goto out;
	rv = site_read(m, site, &old, &site_rev);
	if (rv != 0 && rv != MER_ENOTFOUND)
		goto out;
	if (old && !json_is_true(json_object_get(old, "revoked"))) {
		rv = MER_EEXIST;
		goto out;
	}
	mer_key_fingerprint(pk, fp);
	mer_key_public_encode(pk, pk64);
	json_object_set_new(tok, "used", json_true());
	json_object_set_new(tok, "used_at", json_integer(now));
	json_object_set_new(tok, "used_by", json_string(fp));
	rec = json_pack("{s:s, s:s, s:s, s:s, s:I, s:b}", "name", site,
			"region", region, "public_key", pk64, "fingerprint", fp,
			"joined_at", (json_int_t)now, "revoked", 0);
	ttext = json_dumps(tok, JSON_COMPACT | JSON_SORT_KEYS);
	stext = rec ? json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	if (!ttext || !stext) {
		rv = MER_ENOMEM;
		goto out;
	}
	key_of(m, skey, "sites", site);
	{
		struct mer_etcd_cmp cmps[] = {
		    {.key = tkey,
		     .key_len = strlen(tkey),
		     .target = MER_ETCD_CMP_MOD_REVISION,
		     .result = MER_ETCD_CMP_EQUAL,
		     .number = tok_rev},
		    {.key = skey,
		     .key_len = strlen(skey),
		     .target = MER_ETCD_CMP_MOD_REVISION,
		     .result = MER_ETCD_CMP_EQUAL,
		     .number = site_rev},
		    /* A key is joined once: never re-point an index. */
		    {.key = ikey,
		     .key_len = strlen(ikey),
		     .target = MER_ETCD_CMP_CREATE_REVISION,
		     .result = MER_ETCD_CMP_EQUAL,
		     .number = 0},
		};
		struct mer_etcd_op ops[] = {
		    {.type = MER_ETCD_OP_PUT,
		     .key = tkey,
		     .key_len = strlen(tkey),
		     .value = ttext,
		     .value_len = strlen(ttext)},
		    {.type = MER_ETCD_OP_PUT,
		     .key = skey,
		     .key_len = strlen(skey),
		     .value = stext,
		     .value_len = strlen(stext)},
		    {.type = MER_ETCD_OP_PUT,
		     .key = ikey,
		     .key_len = strlen(ikey),
		     .value = site,
		     .value_len = strlen(site)},
		};
		rv =
		    mer_etcd_txn(m->etcd, cmps, 3, ops, 3, NULL, 0, &res, NULL);
	}
	if (rv == 0 && !res.succeeded)
		rv = MER_ECOMPARE;
out:
	mer_etcd_txn_result_clear(&res);
	free(ttext);
	free(stext);
	json_decref(tok);
	json_decref(old);
	json_decref(rec);
	return rv;
}

int mer_membership_join(struct mer_membership *m, const char *token,
			const uint8_t pk[MER_KEY_BYTES],
			char site[MER_LINK_NAME_MAX],
			char region[MER_LINK_NAME_MAX])
{
	struct mer_token t;
	int rv;

	site[0] = region[0] = '\0';
	if (mer_token_parse(token, &t) != 0)
		return MER_EPARSE;
	for (int i = 0; i < CLAIM_TRIES; i++) {
		rv = claim_once(m, &t, pk, site, region);
		/* Lost a race: the next read says why (used, or the site
		 * now exists). */
		if (rv != MER_ECOMPARE)
			break;
	}
	if (rv == MER_ECOMPARE)
		rv = MER_EUSED;
	if (rv == MER_EEXIST) {
		/* The site may exist because a racing join with this very
		 * token just won: then the honest answer is "used". */
		struct mer_token_info ti;
		if (mer_membership_token_get(m, t.id, &ti) == 0 && ti.used)
			rv = MER_EUSED;
	}
	mer_token_wipe(&t);
	if (rv != 0)
		site[0] = region[0] = '\0';
	return rv;
}

int mer_membership_check_key(struct mer_membership *m,
			     const uint8_t pk[MER_KEY_BYTES],
			     char site[MER_LINK_NAME_MAX])
{
	char ikey[KEY_MAX], hex[65], name[MER_LINK_NAME_MAX];
	uint8_t cur[MER_KEY_BYTES];
	struct mer_etcd_kv kv;
	json_t *o = NULL;
	int64_t rev;
	int rv;

	site[0] = '\0';
	key_hex(pk, hex);
	key_of(m, ikey, "site-keys", hex);
	rv = mer_etcd_get(m->etcd, ikey, strlen(ikey), &kv, NULL);
	if (rv != 0)
		return rv;
	snprintf(name, sizeof(name), "%.*s", (int)kv.value_len, kv.value);
	mer_etcd_kv_clear(&kv);
	rv = site_read(m, name, &o, &rev);
	if (rv == MER_ENOTFOUND)
		return MER_EREVOKED; /* index without a site: deleted */
	if (rv != 0)
		return rv;
	if (json_is_true(json_object_get(o, "revoked")) ||
	    mer_key_public_decode(
		json_string_value(json_object_get(o, "public_key")), cur) !=
		0 ||
	    sodium_memcmp(cur, pk, MER_KEY_BYTES) != 0) {
		/* Revoked, or the site joined again with a new key: this
		 * key stays refused. */
		rv = MER_EREVOKED;
	} else {
		snprintf(site, MER_LINK_NAME_MAX, "%s", name);
	}
	json_decref(o);
	return rv;
}

/*
 * Marks the site record revoked (txn guarded by its mod_revision) and, in
 * the same txn, deletes the dataset replicas its stages made
 * ("<prefix>/replicas/<site>/", docs/STATE.md): a revoked site's data is
 * out of the federation's reach, so nothing must be placed for it.
 */
static int revoke_txn(struct mer_membership *m, const char *site,
		      const char *text, int64_t rev)
{
	char key[KEY_MAX], reps[KEY_MAX];
	struct mer_etcd_txn_result r = {0};
	int rv;

	key_of(m, key, "sites", site);
	/* The trailing slash: "a" must not take "ab"'s replicas. */
	snprintf(reps, sizeof(reps), "%s/replicas/%s/", m->prefix, site);
	struct mer_etcd_cmp c = {.key = key,
				 .key_len = strlen(key),
				 .target = MER_ETCD_CMP_MOD_REVISION,
				 .result = MER_ETCD_CMP_EQUAL,
				 .number = rev};
	struct mer_etcd_op ops[2] = {{.type = MER_ETCD_OP_PUT,
				      .key = key,
				      .key_len = strlen(key),
				      .value = text,
				      .value_len = text ? strlen(text) : 0},
				     {.type = MER_ETCD_OP_DELETE,
				      .key = reps,
				      .key_len = strlen(reps),
				      .prefix = 1}};
	/* Already revoked (text NULL): only the replicas, again. */
	if (!text)
		return mer_etcd_delete_prefix(m->etcd, reps, strlen(reps), NULL,
					      NULL);
	rv = mer_etcd_txn(m->etcd, &c, 1, ops, 2, NULL, 0, &r, NULL);
	if (rv == 0 && !r.succeeded)
		rv = MER_ECOMPARE;
	mer_etcd_txn_result_clear(&r);
	return rv;
}

int mer_membership_revoke(struct mer_membership *m, const char *site)
{
	json_t *o = NULL;
	char *text;
	int64_t rev;
	int rv = MER_ECOMPARE;

	if (!valid_name(site))
		return MER_EINVAL;
	for (int i = 0; i < CLAIM_TRIES && rv == MER_ECOMPARE; i++) {
		rv = site_read(m, site, &o, &rev);
		if (rv != 0)
			return rv;
		if (json_is_true(json_object_get(o, "revoked"))) {
			json_decref(o);
			/* A repeat clears what an earlier one may have
			 * left (or a revoke from before replicas went
			 * with it). */
			return revoke_txn(m, site, NULL, rev);
		}
		json_object_set_new(o, "revoked", json_true());
		json_object_set_new(o, "revoked_at", json_integer(wall_now()));
		text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(o);
		o = NULL;
		if (!text)
			return MER_ENOMEM;
		rv = revoke_txn(m, site, text, rev);
		free(text);
	}
	if (rv == 0)
		mer_info("site revoked", "site=%s", site);
	return rv;
}
