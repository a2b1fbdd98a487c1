import ESTestSupport
import EventSourcingPostgres
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A throwaway PostgreSQL cluster of the test's own, made with the binaries of the server
/// scripts/test.sh started (`ES_POSTGRES_CTL`, run as `ES_POSTGRES_RUN_AS` when we are root),
/// so a test can restart it without disturbing the tests that share the main server (every
/// test target runs in one process, in parallel).
final class PrivateCluster: Sendable {
    static let environment = ProcessInfo.processInfo.environment
    static let ctl = environment["ES_POSTGRES_CTL"].flatMap { $0.isEmpty ? nil : $0 }
    static let runAs = environment["ES_POSTGRES_RUN_AS"].flatMap { $0.isEmpty ? nil : $0 }

    /// Whether a test that restarts a server can run: with CI=true always (and it fails when
    /// `ES_POSTGRES_CTL` is missing); otherwise only with `ES_POSTGRES_CTL`, else one loud line.
    static let available: Bool = {
        if ctl != nil || PostgresTestServer.isCI { return true }
        if PostgresTestServer.available {
            FileHandle.standardError.write(Data(
                "!!! ES_POSTGRES_CTL is not set: the PostgreSQL server-restart test is SKIPPED. Run scripts/test.sh. !!!\n".utf8))
        }
        return false
    }()

    let dir: String
    let data: String
    let log: String
    let ctl: String
    let port: Int
    let password: String

    private init(dir: String, ctl: String, port: Int, password: String) {
        self.dir = dir
        self.data = dir + "/data"
        self.log = dir + "/server.log"
        self.ctl = ctl
        self.port = port
        self.password = password
    }

    /// Creates and starts a cluster on a free loopback port (password authentication over TCP).
    /// With `tls`, the server has `ssl=on` with a certificate from ``TestCertificates`` made in
    /// the cluster's directory, and accepts user `estest` only over TLS with a client
    /// certificate the same CA signed for that name (`clientcert=verify-full`).
    static func start(tls: Bool = false) async throws -> PrivateCluster {
        guard let ctl else {
            throw ChildProcessError(description: "CI=true but ES_POSTGRES_CTL is not set: the server-restart test cannot run")
        }
        let bin = (ctl as NSString).deletingLastPathComponent
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("es-pg-restart-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let password = UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let pwfile = dir + "/pw"
        try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: pwfile))
        _ = chmod(pwfile, 0o644)
        if getuid() == 0 {
            guard let runAs else { throw ChildProcessError(description: "running as root but ES_POSTGRES_RUN_AS is not set") }
            _ = try await ChildProcess.run("chown", ["-R", runAs, dir], stderrPath: "/dev/null")
        }
        let port = try unusedLocalPort()
        let cluster = PrivateCluster(dir: dir, ctl: ctl, port: port, password: password)
        do {
            try await cluster.asServerUser(bin + "/initdb", ["-D", cluster.data, "-U", "estest", "--pwfile=" + pwfile,
                                                             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
            try? FileManager.default.removeItem(atPath: pwfile)
            var options = "-p \(port) -k \(dir) -c listen_addresses=127.0.0.1 -c fsync=on"
            if tls {
                let certs = try await TestCertificates.make(in: dir + "/tls")
                options += " -c ssl=on -c ssl_cert_file=\(certs.serverCertificate) -c ssl_key_file=\(certs.serverKey)"
                    + " -c ssl_ca_file=\(certs.caCertificate)"
                // First match wins: estest only over TLS with its certificate, nothing in the clear.
                let hba = cluster.data + "/pg_hba.conf"
                let rest = try String(contentsOfFile: hba, encoding: .utf8)
                try Data(("hostssl all estest 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
                          + "hostnossl all all 127.0.0.1/32 reject\n" + rest).utf8).write(to: URL(fileURLWithPath: hba))
                if getuid() == 0, let runAs {
                    _ = try await ChildProcess.run("chown", ["-R", runAs, dir], stderrPath: "/dev/null")
                }
            }
            try await cluster.asServerUser(ctl, ["-D", cluster.data, "-l", cluster.log, "-w", "-t", "60",
                                                 "-o", options, "start"])
        } catch {
            await cluster.stop()
            throw error
        }
        return cluster
    }

    /// The connection settings for the cluster (schema to be set by the caller).
    var configuration: PostgresStore.Configuration {
        PostgresStore.Configuration(host: "127.0.0.1", port: port, username: "estest", password: password, database: "postgres",
                              tls: .disable)
    }

    /// `runuser -u $ES_POSTGRES_RUN_AS -- $ES_POSTGRES_CTL -D DATA restart -m immediate -w` (pg_ctl directly when
    /// not root); `-l` keeps the server's output out of our pipe.
    func restartImmediately() async throws {
        try await asServerUser(ctl, ["-D", data, "-l", log, "-w", "-t", "60", "restart", "-m", "immediate"])
    }

    /// Every process of the cluster: the postmaster (first line of postmaster.pid) and its children.
    private func serverProcesses() throws -> [pid_t] {
        let pidFile = try String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8)
        guard let first = pidFile.split(separator: "\n").first, let postmaster = pid_t(first) else {
            throw ChildProcessError(description: "no postmaster pid in \(data)/postmaster.pid")
        }
        var out = [postmaster]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // "pid (comm) state ppid …": the fields after the command name.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, pid_t(fields[1]) == postmaster { out.append(pid) }
        }
        return out
    }

    /// Freezes every server process (SIGSTOP): connections stay open, nothing answers, and
    /// not even `statement_timeout` can fire — a server that hangs, or a network that drops
    /// everything silently.
    func freeze() throws {
        for pid in try serverProcesses() { kill(pid, SIGSTOP) }
    }

    /// Undoes ``freeze()``.
    func thaw() throws {
        for pid in try serverProcesses() { kill(pid, SIGCONT) }
    }

    /// Starts a cluster, runs `body` with it, and stops and deletes it afterwards, also when
    /// `body` throws.
    static func with(tls: Bool = false, _ body: (PrivateCluster) async throws -> Void) async throws {
        let cluster = try await start(tls: tls)
        do {
            try await body(cluster)
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    /// Stops the cluster (immediately) and deletes it.
    func stop() async {
        try? thaw()
        if FileManager.default.fileExists(atPath: data + "/postmaster.pid") {
            _ = try? await asServerUser(ctl, ["-D", data, "-m", "immediate", "-w", "stop"])
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The server log so far (for failure messages).
    var serverLog: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    @discardableResult
    private func asServerUser(_ executable: String, _ arguments: [String]) async throws -> String {
        let stderrPath = FileManager.default.temporaryDirectory.appendingPathComponent("es-pg-cmd-\(UUID().uuidString).stderr").path
        defer { try? FileManager.default.removeItem(atPath: stderrPath) }
        if getuid() == 0, let runAs = PrivateCluster.runAs {
            return try await ChildProcess.run("runuser", ["-u", runAs, "--", executable] + arguments, stderrPath: stderrPath)
        }
        return try await ChildProcess.run(executable, arguments, stderrPath: stderrPath)
    }
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate for user `estest`
/// signed by it, and a second CA that signed nothing of these: PEM files made with `openssl`
/// in a directory of the test's own (EC P-256 keys, valid two days).
struct TestCertificates: Sendable {
    let directory: String
    var caCertificate: String { directory + "/ca.crt" }
    var serverCertificate: String { directory + "/server.crt" }
    var serverKey: String { directory + "/server.key" }
    var clientCertificate: String { directory + "/client.crt" }
    var clientKey: String { directory + "/client.key" }
    var otherCACertificate: String { directory + "/other-ca.crt" }

    static func make(in directory: String) async throws -> TestCertificates {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let certs = TestCertificates(directory: directory)
        func openssl(_ arguments: [String]) async throws {
            _ = try await ChildProcess.run("openssl", arguments, stderrPath: directory + "/openssl.stderr")
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ["ca", "other-ca"] {
            try await openssl(["req", "-x509"] + ec + ["-keyout", directory + "/\(ca).key", "-out", directory + "/\(ca).crt",
                               "-days", "2", "-subj", "/CN=es test \(ca)",
                               "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        }
        for (name, subject, ext) in [("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                                     ("client", "/CN=estest", "extendedKeyUsage=clientAuth\n")] {
            try await openssl(["req"] + ec + ["-keyout", directory + "/\(name).key", "-out", directory + "/\(name).csr",
                               "-subj", subject])
            try Data(ext.utf8).write(to: URL(fileURLWithPath: directory + "/\(name).ext"))
            try await openssl(["x509", "-req", "-in", directory + "/\(name).csr", "-CA", certs.caCertificate,
                               "-CAkey", directory + "/ca.key", "-CAcreateserial", "-days", "2",
                               "-extfile", directory + "/\(name).ext", "-out", directory + "/\(name).crt"])
        }
        // The server refuses a key file others can read.
        _ = chmod(certs.serverKey, 0o600)
        return certs
    }
}
