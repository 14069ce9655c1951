package org.lossless.peer;

/** Answers with who answered, so a test can tell which provider a request reached. */
public final class GreeterImpl implements Greeter {
    private final String who;

    public GreeterImpl(String who) {
        this.who = who;
    }

    @Override
    public String greet(String name) {
        return "hello " + name + " from " + who;
    }
}
