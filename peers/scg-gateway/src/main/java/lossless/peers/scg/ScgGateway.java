package lossless.peers.scg;

import java.net.URI;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.cloud.gateway.filter.GlobalFilter;
import org.springframework.cloud.gateway.route.RouteLocator;
import org.springframework.cloud.gateway.route.builder.RouteLocatorBuilder;
import org.springframework.cloud.gateway.support.ServerWebExchangeUtils;
import org.springframework.context.annotation.Bean;
import org.springframework.http.HttpHeaders;
import reactor.core.publisher.Mono;

/**
 * Spring Cloud Gateway with one route: every path to {@code lb://<demo.service>}, resolved by
 * Spring Cloud LoadBalancer from Eureka discovery, all at their defaults
 * (application.properties lists the ones that matter).
 *
 * <p>One addition, for measurement only: when an answer does not come from an instance (the
 * request failed on its way to it, e.g. connection refused by an instance that has exited), the
 * gateway names the instance the balancer chose in {@code x-instance} and sets
 * {@code x-gateway-error: 1}. It changes neither the routing nor the status code.
 */
@SpringBootApplication
public class ScgGateway {
    public static void main(String[] args) {
        SpringApplication.run(ScgGateway.class, args);
    }

    @Bean
    RouteLocator routes(RouteLocatorBuilder builder, @Value("${demo.service}") String service) {
        return builder.routes()
                .route("demo", r -> r.path("/**").uri("lb://" + service))
                .build();
    }

    @Bean
    GlobalFilter chosenInstance() {
        return (exchange, chain) -> {
            exchange.getResponse().beforeCommit(() -> {
                URI chosen = exchange.getAttribute(ServerWebExchangeUtils.GATEWAY_REQUEST_URL_ATTR);
                HttpHeaders headers = exchange.getResponse().getHeaders();
                if (chosen != null && chosen.getPort() > 0 && !headers.containsKey("x-instance")) {
                    headers.set("x-instance", chosen.getHost() + ":" + chosen.getPort());
                    headers.set("x-gateway-error", "1");
                }
                return Mono.empty();
            });
            return chain.filter(exchange);
        };
    }
}
