/*
 * Key pairs and key files for the federation link. Not the handshake
 * (channel.c) and not token secrets (token.c). The file holds the private
 * key as one base64 line plus the public key for people to read.
 */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

#define KEY_MAGIC "meridian-x25519-v1"
#define KEY_FILE_MAX 512

static void set_err(char *err, size_t errlen, const char *fmt, const char *a,
		    const char *b)
{
	if (err && errlen)
		snprintf(err, errlen, fmt, a, b);
}

int mer_keypair_generate(struct mer_keypair *kp)
{
	if (sodium_init() < 0)
		return MER_ECRYPTO;
	randombytes_buf(kp->sk, sizeof(kp->sk));
	if (crypto_scalarmult_base(kp->pk, kp->sk) != 0) {
		sodium_memzero(kp->sk, sizeof(kp->sk));
		return MER_ECRYPTO;
	}
	return 0;
}

void mer_keypair_wipe(struct mer_keypair *kp)
{
	if (kp)
		sodium_memzero(kp, sizeof(*kp));
}

static void encode32(const uint8_t key[MER_KEY_BYTES],
		     char out[MER_KEY_B64_SIZE])
{
	sodium_bin2base64(out, MER_KEY_B64_SIZE, key, MER_KEY_BYTES,
			  sodium_base64_VARIANT_ORIGINAL);
}

void mer_key_public_encode(const uint8_t pk[MER_KEY_BYTES],
			   char out[MER_KEY_B64_SIZE])
{
	encode32(pk, out);
}

int mer_key_public_decode(const char *b64, uint8_t pk[MER_KEY_BYTES])
{
	size_t n = 0;

	if (!b64 ||
	    sodium_base642bin(pk, MER_KEY_BYTES, b64, strlen(b64), NULL, &n,
			      NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    n != MER_KEY_BYTES)
		return MER_EPARSE;
	return 0;
}

void mer_key_fingerprint(const uint8_t pk[MER_KEY_BYTES],
			 char out[MER_KEY_FP_SIZE])
{
	uint8_t h[crypto_hash_sha256_BYTES];

	crypto_hash_sha256(h, pk, MER_KEY_BYTES);
	memcpy(out, "SHA256:", 7);
	sodium_bin2base64(out + 7, MER_KEY_FP_SIZE - 7, h, sizeof(h),
			  sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
}

int mer_key_fingerprint_check(const uint8_t pk[MER_KEY_BYTES], const char *fp)
{
	uint8_t want[crypto_hash_sha256_BYTES], have[crypto_hash_sha256_BYTES];
	size_t n = 0;
	const char *b64;

	if (!fp || strncasecmp(fp, "SHA256:", 7) != 0)
		return MER_EPARSE;
	b64 = fp + 7;
	/* Accept the padded form too: people copy fingerprints from tools
	 * that add '='. */
	if (sodium_base642bin(want, sizeof(want), b64, strlen(b64), "=", &n,
			      NULL,
			      sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 ||
	    n != sizeof(want))
		return MER_EPARSE;
	crypto_hash_sha256(have, pk, MER_KEY_BYTES);
	return sodium_memcmp(want, have, sizeof(want)) == 0 ? 0 : MER_EAUTH;
}

int mer_keypair_save(const char *path, const struct mer_keypair *kp, char *err,
		     size_t errlen)
{
	char buf[KEY_FILE_MAX], sk64[MER_KEY_B64_SIZE], pk64[MER_KEY_B64_SIZE];
	int fd, rv = MER_EIO, n, saved;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		int e = errno; /* set_err's snprintf may change errno */
		set_err(err, errlen, "cannot create key file %s: %s", path,
			strerror(e));
		return e == EEXIST ? MER_EEXIST : MER_EIO;
	}
	/* The umask can only narrow 0600, but a file created by someone
	 * else's umask-less helper should not be trusted: set it outright. */
	if (fchmod(fd, 0600) != 0)
		goto out_unlink;
	encode32(kp->sk, sk64);
	encode32(kp->pk, pk64);
	n = snprintf(buf, sizeof(buf), KEY_MAGIC " %s\npublic %s\n", sk64,
		     pk64);
	sodium_memzero(sk64, sizeof(sk64));
	if (n < 0 || (size_t)n >= sizeof(buf) ||
	    write(fd, buf, (size_t)n) != (ssize_t)n || fsync(fd) != 0)
		goto out_unlink;
	sodium_memzero(buf, sizeof(buf));
	if (close(fd) != 0) {
		fd = -1;
		goto out_unlink;
	}
	return 0;

out_unlink:
	saved = errno;
	sodium_memzero(buf, sizeof(buf));
	set_err(err, errlen, "cannot write key file %s: %s", path,
		strerror(saved));
	if (fd >= 0)
		close(fd);
	unlink(path);
	return rv;
}

int mer_keypair_load(const char *path, struct mer_keypair *kp, char *err,
		     size_t errlen)
{
	char buf[KEY_FILE_MAX], sk64[MER_KEY_B64_SIZE + 8];
	uint8_t pk[MER_KEY_BYTES];
	struct stat st;
	ssize_t n;
	size_t len;
	int fd, rv = MER_EPARSE, saved;

	if (sodium_init() < 0)
		return MER_ECRYPTO;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno; /* set_err's snprintf may change errno */
		set_err(err, errlen, "cannot open key file %s: %s", path,
			strerror(e));
		return e == ENOENT ? MER_ENOTFOUND : MER_EIO;
	}
	/* fstat on the open descriptor: no window between check and read. */
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		set_err(err, errlen, "key file %s: %s", path,
			"not a regular file");
		close(fd);
		return MER_EIO;
	}
	/* Someone else's file could have been planted for us to use. */
	if (st.st_uid != geteuid()) {
		if (err && errlen)
			snprintf(err, errlen,
				 "key file %s is owned by uid %u, not by this "
				 "user (uid %u): refusing to use it",
				 path, (unsigned)st.st_uid,
				 (unsigned)geteuid());
		close(fd);
		return MER_EPERM;
	}
	if (st.st_mode & 077) {
		if (err && errlen)
			snprintf(err, errlen,
				 "key file %s has mode %04o: it must not be "
				 "accessible by group or others; run "
				 "'chmod 600 %s'",
				 path, (unsigned)(st.st_mode & 07777), path);
		close(fd);
		return MER_EPERM;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	saved = errno;
	close(fd);
	if (n <= 0) {
		set_err(err, errlen, "cannot read key file %s: %s", path,
			n < 0 ? strerror(saved) : "empty file");
		return MER_EIO;
	}
	buf[n] = '\0';
	len = strlen(KEY_MAGIC);
	if ((size_t)n < len + 2 || memcmp(buf, KEY_MAGIC " ", len + 1) != 0)
		goto out_bad;
	{
		const char *p = buf + len + 1;
		size_t i = 0;
		while (p[i] && p[i] != '\n' && i < sizeof(sk64) - 1) {
			sk64[i] = p[i];
			i++;
		}
		sk64[i] = '\0';
	}
	if (mer_key_public_decode(sk64, kp->sk) != 0)
		goto out_bad;
	if (crypto_scalarmult_base(pk, kp->sk) != 0)
		goto out_bad;
	memcpy(kp->pk, pk, sizeof(pk));
	rv = 0;
	goto out;

out_bad:
	sodium_memzero(kp, sizeof(*kp));
	set_err(err, errlen, "key file %s: %s", path,
		"not a Meridian key file");
out:
	sodium_memzero(buf, sizeof(buf));
	sodium_memzero(sk64, sizeof(sk64));
	return rv;
}

int mer_keypair_load_or_create(const char *path, struct mer_keypair *kp,
			       int *created, char *err, size_t errlen)
{
	int rv = mer_keypair_load(path, kp, err, errlen);

	if (created)
		*created = 0;
	if (rv != MER_ENOTFOUND)
		return rv;
	rv = mer_keypair_generate(kp);
	if (rv != 0)
		return rv;
	rv = mer_keypair_save(path, kp, err, errlen);
	if (rv != 0) {
		mer_keypair_wipe(kp);
		return rv;
	}
	if (created)
		*created = 1;
	return 0;
}
