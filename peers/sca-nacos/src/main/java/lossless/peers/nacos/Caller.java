package lossless.peers.nacos;

import java.io.IOException;
import java.net.http.HttpClient;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.cloud.client.ServiceInstance;
import org.springframework.cloud.client.discovery.DiscoveryClient;
import org.springframework.cloud.client.loadbalancer.LoadBalanced;
import org.springframework.context.annotation.Bean;
import org.springframework.http.HttpMethod;
import org.springframework.http.client.ClientHttpRequestFactory;
import org.springframework.http.client.JdkClientHttpRequestFactory;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;
import org.springframework.web.client.RestClient;

/**
 * A caller that picks the provider's instance itself: Spring Cloud LoadBalancer (round robin, its
 * 35 s instance-list cache) over Spring Cloud Alibaba Nacos Discovery (nacos-client's own cache,
 * pushed over gRPC), all at their defaults. {@code GET /call?n=N&method=M&path=P} sends N requests
 * one after the other to {@code http://<demo.service>P} through the {@code @LoadBalanced}
 * RestClient and answers one JSON object per request: {@code pick} (the {@code ip:port} the
 * balancer chose), {@code status}, {@code instance} (the provider's {@code x-instance}: who
 * answered), {@code error}. {@code GET /instances} lists what discovery returns.
 */
@SpringBootApplication
public class Caller {
    public static void main(String[] args) {
        SpringApplication.run(Caller.class, args);
    }

    /** The address the balancer chose, as the HTTP client is asked to connect to it. */
    static final ThreadLocal<String> PICK = new ThreadLocal<>();

    @Bean
    @LoadBalanced
    RestClient.Builder loadBalanced() {
        // HTTP/1.1: the JDK client would otherwise offer an h2c upgrade on every plain request
        ClientHttpRequestFactory jdk =
                new JdkClientHttpRequestFactory(HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build());
        ClientHttpRequestFactory recording = (uri, method) -> {
            PICK.set(uri.getHost() + ":" + uri.getPort());
            return jdk.createRequest(uri, method);
        };
        return RestClient.builder().requestFactory(recording);
    }

    @RestController
    static class Calls {
        private final RestClient client;
        private final DiscoveryClient discovery;
        private final String service;

        Calls(@LoadBalanced RestClient.Builder builder, DiscoveryClient discovery,
                @Value("${demo.service}") String service) {
            this.client = builder.build();
            this.discovery = discovery;
            this.service = service;
        }

        @GetMapping("/call")
        List<Map<String, Object>> call(@RequestParam(defaultValue = "1") int n,
                @RequestParam(defaultValue = "GET") String method, @RequestParam(defaultValue = "/who") String path) {
            List<Map<String, Object>> out = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                out.add(one(HttpMethod.valueOf(method), path));
            }
            return out;
        }

        private Map<String, Object> one(HttpMethod method, String path) {
            Map<String, Object> r = new LinkedHashMap<>();
            PICK.remove();
            long t0 = System.nanoTime();
            try {
                RestClient.RequestBodySpec spec = client.method(method).uri("http://" + service + path);
                if (method == HttpMethod.POST || method == HttpMethod.PUT) {
                    spec = spec.body("payload-" + System.nanoTime());
                }
                spec.exchange((req, res) -> {
                    r.put("status", res.getStatusCode().value());
                    r.put("instance", res.getHeaders().getFirst("x-instance"));
                    r.put("body", new String(res.getBody().readAllBytes(), StandardCharsets.UTF_8));
                    return null;
                });
            } catch (RuntimeException e) {
                r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            r.put("pick", PICK.get());
            r.put("ms", (System.nanoTime() - t0) / 1_000_000.0);
            return r;
        }

        @GetMapping("/instances")
        List<String> instances() throws IOException {
            List<String> out = new ArrayList<>();
            for (ServiceInstance si : discovery.getInstances(service)) {
                out.add(si.getHost() + ":" + si.getPort());
            }
            return out;
        }
    }
}
